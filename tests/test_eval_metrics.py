"""The evaluate modules in eval/metrics against hand-computed scores on the protocols' awkward cases."""

from pathlib import Path

import evaluate
import pytest

import hive_vlm.eval


METRICS_DIR = Path(hive_vlm.eval.__file__).parent / "metrics"


@pytest.fixture(scope="module")
def load_metric():
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
        return cache[name]

    return load


def test_every_module_loads_offline_from_its_file_and_documents_its_protocol(load_metric):
    for name in ("vqa_accuracy", "mme", "gqa_accuracy", "scienceqa_accuracy"):
        module = evaluate.load(str(METRICS_DIR / name / f"{name}.py"), keep_in_memory=True)
        assert "protocol=" in module.description
        assert type(module) is type(load_metric(name))


# ---------------------------------------------------------------- VQA accuracy
# Each case: prediction, the 10 human answers, official score, lmms-eval score (percentages).
# Per answer i, the score is min(1, matches among the 9 others / 3); the question's score is the mean of the 10.
VQA_CASES = {
    # All ten identical: official normalises nothing, so "yes" != "Yes": 0 matches -> 0.
    # lmms-eval lowercases both: each answer has 9 matching others -> min(1, 9/3) = 1 -> 100.
    "identical answers, case differs": ("yes", ["Yes"] * 10, 0.0, 100.0),
    "identical answers, exact": ("Yes", ["Yes"] * 10, 100.0, 100.0),
    # Identical answers: official keeps "t-shirt" as is, != "t shirt" -> 0. lmms-eval: "-" inside a word becomes
    # a space -> "t shirt" == "t shirt" -> 100.
    "identical answers, punctuation": ("t-shirt", ["t shirt"] * 10, 0.0, 100.0),
    # Answers -> 2, 2, 2, then seven 3; "two" -> "2". The three "2" answers each see 2 others: 2/3.
    # The seven "3" answers each see 3: 1. Mean = (3 * 2/3 + 7 * 1) / 10 = 0.9 -> 90.
    "number word": ("two", ["two", "two", "2"] + ["3"] * 7, 90.0, 90.0),
    # "a dog", "a dog", "dog" -> "dog" x3; "The dog" -> "dog": same arithmetic -> 90.
    "articles": ("The dog", ["a dog", "a dog", "dog"] + ["cat"] * 7, 90.0, 90.0),
    # "dont" -> "don't" through the contractions table; three "don't" answers -> 90.
    "contraction": ("dont", ["don't"] * 3 + ["no"] * 7, 90.0, 90.0),
    # The table's key is "Im" but words are lowercased first: "im" stays "im" != "i'm" -> 0.
    "capitalised contraction key never matches": ("Im", ["i'm"] * 3 + ["no"] * 7, 0.0, 0.0),
    # " -" occurs, so every "-" is deleted, the one inside "t-shirt" too: "tshirt" matches 3 answers -> 90.
    "punctuation touching a space is deleted everywhere": ("t-shirt -", ["tshirt"] * 3 + ["shirt"] * 7, 90.0, 90.0),
    # "-" touches no space: replaced by a space -> "t shirt" != "tshirt" -> 0.
    "punctuation inside a word becomes a space": ("t-shirt", ["tshirt"] * 3 + ["shirt"] * 7, 0.0, 0.0),
    # Official: "1,0" is digit,digit, so every mark is deleted: "1000 tshirts" matches 3 answers -> 90.
    # lmms-eval deletes commas first, so the rule never fires: "-" becomes a space, "1000 t shirts" -> 0.
    "digit,digit deletes all punctuation": ("1,000 t-shirts", ["1000 tshirts"] * 3 + ["many"] * 7, 90.0, 0.0),
    # 32 periods are removed -> "yes" matches 3 answers -> 90; with 33, "yes." is left -> 0 (both tools).
    "32 periods removed": ("yes" + "." * 32, ["yes"] * 3 + ["no"] * 7, 90.0, 90.0),
    "the 33rd period stays": ("yes" + "." * 33, ["yes"] * 3 + ["no"] * 7, 0.0, 0.0),
    # A period followed by a digit stays: "3.5" matches 3 answers -> 90.
    "decimal point kept": ("3.5", ["3.5"] * 3 + ["4"] * 7, 90.0, 90.0),
    # Official leaves "man's hat" alone (no apostrophe rule) != "man 's hat" -> 0. lmms-eval splits "'s" on
    # both sides: "man 's hat" == "man 's hat" -> 90.
    "lmms-eval splits 's": ("man's hat", ["man 's hat"] * 3 + ["hat"] * 7, 0.0, 90.0),
    # Newlines and tabs become spaces, then both ends are stripped: "yes" == "yes" for all ten -> 100.
    "whitespace around the prediction": ("\n  yes \t", ["yes"] * 10, 100.0, 100.0),
}


@pytest.mark.parametrize("case", VQA_CASES, ids=list(VQA_CASES))
def test_vqa_accuracy_matches_hand_computed_scores(load_metric, case):
    prediction, answers, official, lmms_eval = VQA_CASES[case]
    vqa = load_metric("vqa_accuracy")
    assert vqa.compute(predictions=[prediction], references=[answers])["vqa_accuracy"] == pytest.approx(official)
    result = vqa.compute(predictions=[prediction], references=[answers], protocol="lmms-eval")
    assert result["vqa_accuracy"] == pytest.approx(lmms_eval)


def test_vqa_accuracy_averages_questions(load_metric):
    # "number word" scores 90 and "capitalised contraction key" scores 0: mean = 45.
    predictions = ["two", "Im"]
    references = [["two", "two", "2"] + ["3"] * 7, ["i'm"] * 3 + ["no"] * 7]
    result = load_metric("vqa_accuracy").compute(predictions=predictions, references=references)
    assert result["vqa_accuracy"] == pytest.approx(45.0)


def test_vqa_accuracy_rejects_bad_input(load_metric):
    vqa = load_metric("vqa_accuracy")
    with pytest.raises(ValueError, match="protocol"):
        vqa.compute(predictions=["a"], references=[["a"]], protocol="vqav3")
    with pytest.raises(ValueError, match=r"references\[1\]"):
        vqa.compute(predictions=["a", "b"], references=[["a"], []])


# ---------------------------------------------------------------- MME
# Listed with every first question before every second one, so pairing by position would be wrong.
MME_ROWS = [
    # prediction, reference, question_id, category
    ("Yes, there is a dog", "Yes", "e1.jpg", "existence"),  # prefix "yes," -> yes: right (both)
    ("  Yes", "Yes", "e2.jpg", "existence"),  # official: prefix "  ye" -> other: wrong; lmms-eval strips: right
    ("yes.", "Yes", "c1.jpg", "count"),  # prefix "yes." -> yes: right (both)
    ("N", "No", "r1.jpg", "code_reasoning"),  # official: "n" -> other: wrong; lmms-eval: n -> no: right
    ("I think yes", "Yes", "r2.jpg", "code_reasoning"),  # prefix "i th" -> other: wrong (both)
    ("no", "No", "e1.jpg", "existence"),  # right (both)
    ("Yes", "No", "e2.jpg", "existence"),  # wrong (both)
    ("Nope", "No", "c1.jpg", "count"),  # prefix "nope" holds "no" -> no: right (both)
    ("Y", "Yes", "r1.jpg", "code_reasoning"),  # official: other: wrong; lmms-eval: y -> yes: right
    (" No", "No", "r2.jpg", "code_reasoning"),  # prefix " no" holds "no" -> no: right (both)
]


def _mme(load_metric, rows, protocol):
    predictions, references, question_ids, categories = (list(column) for column in zip(*rows))
    return load_metric("mme").compute(
        predictions=predictions, references=references, question_ids=question_ids, categories=categories,
        protocol=protocol,
    )  # fmt: skip


def test_mme_official_scores(load_metric):
    result = _mme(load_metric, MME_ROWS, "official")
    # existence: e1 right+right, e2 wrong+wrong -> acc 2/4 = 50, acc+ 1/2 = 50, score 100.
    # (Pairing by position would pair e1q1 with e2q1 and e1q2 with e2q2: acc+ 0.)
    assert result["per_category"]["existence"] == pytest.approx({"acc": 50.0, "acc_plus": 50.0, "score": 100.0})
    # count: c1 right+right -> 100 + 100 = 200.
    assert result["per_category"]["count"] == pytest.approx({"acc": 100.0, "acc_plus": 100.0, "score": 200.0})
    # code_reasoning: r1 wrong+wrong, r2 wrong+right -> acc 1/4 = 25, acc+ 0, score 25.
    assert result["per_category"]["code_reasoning"] == pytest.approx({"acc": 25.0, "acc_plus": 0.0, "score": 25.0})
    # perception = existence + count = 100 + 200; cognition = code_reasoning = 25.
    assert result["perception"] == pytest.approx(300.0)
    assert result["cognition"] == pytest.approx(25.0)


def test_mme_lmms_eval_scores(load_metric):
    result = _mme(load_metric, MME_ROWS, "lmms-eval")
    # existence: e1 right+right, e2 right+wrong -> acc 75, acc+ 50, score 125.
    assert result["per_category"]["existence"]["score"] == pytest.approx(125.0)
    # count: 200 as before. code_reasoning: r1 right+right, r2 wrong+right -> acc 75, acc+ 50, score 125.
    assert result["per_category"]["code_reasoning"] == pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0})
    assert result["perception"] == pytest.approx(325.0)  # 125 + 200
    assert result["cognition"] == pytest.approx(125.0)


def test_mme_does_not_depend_on_row_order(load_metric):
    assert _mme(load_metric, MME_ROWS[::-1], "official") == _mme(load_metric, MME_ROWS, "official")


def test_mme_rejects_bad_input(load_metric):
    with pytest.raises(ValueError, match="'c1.jpg'.*1 question"):
        _mme(load_metric, MME_ROWS[:7], "official")  # c1.jpg's second question is missing
    with pytest.raises(ValueError, match="not an MME subtask"):
        _mme(load_metric, [("yes", "Yes", "a", "colour"), ("no", "No", "a", "colour")], "official")
    with pytest.raises(ValueError, match=r"references\[1\]"):
        _mme(load_metric, [("yes", "Yes", "a", "color"), ("no", "Maybe", "a", "color")], "official")


# ---------------------------------------------------------------- GQA
GQA_ROWS = [
    # prediction, reference: official / llava / lmms-eval
    ("yes", "yes"),  # right / right / right
    ("Left.", "left"),  # wrong / rstrip(".").lower() -> right / right
    ("tshirt", "t-shirt"),  # wrong / wrong / punctuation deleted from the reference -> right
    (" yes", "yes"),  # wrong / " yes" -> wrong / stripped -> right
    ("no...", "no"),  # wrong / right / right
    ("yes", "no"),  # wrong / wrong / wrong
]


@pytest.mark.parametrize(
    "protocol, expected",
    [("official", 100 * 1 / 6), ("llava", 100 * 3 / 6), ("lmms-eval", 100 * 5 / 6)],
)
def test_gqa_accuracy_variants(load_metric, protocol, expected):
    predictions, references = (list(column) for column in zip(*GQA_ROWS))
    result = load_metric("gqa_accuracy").compute(predictions=predictions, references=references, protocol=protocol)
    assert result["accuracy"] == pytest.approx(expected)


# ---------------------------------------------------------------- ScienceQA
SQA_ROWS = [
    # num_choices, answer index, prediction: llava / lmms-eval
    (3, 0, "A"),  # right / right
    (3, 1, "B. dog"),  # "X. " prefix: right / "B." prefix: right
    (2, 1, "The answer is B."),  # found once: right / starts "Th": wrong
    (2, 1, "The answer is B. The answer is B."),  # found twice -> failed: wrong / wrong
    (2, 1, "the answer is B."),  # case-sensitive pattern: wrong / wrong
    (3, 0, "a"),  # not an option letter: wrong / case-insensitive: right
    (2, 1, "C"),  # C is beyond the 2 choices: wrong / wrong
    (4, 2, "C."),  # neither "C" nor "C. ": wrong / "C." prefix: right
    (3, 2, "The answer is C, because"),  # the pattern's last "." matches ",": right / wrong
    (2, 0, " A"),  # not stripped: wrong / stripped: right
]


@pytest.mark.parametrize("protocol, expected", [("llava", 100 * 4 / 10), ("lmms-eval", 100 * 5 / 10)])
def test_scienceqa_accuracy_parsing(load_metric, protocol, expected):
    num_choices, references, predictions = (list(column) for column in zip(*SQA_ROWS))
    result = load_metric("scienceqa_accuracy").compute(
        predictions=predictions, references=references, num_choices=num_choices, protocol=protocol
    )
    assert result["accuracy"] == pytest.approx(expected)


def test_scienceqa_rejects_an_answer_outside_the_choices(load_metric):
    with pytest.raises(ValueError, match=r"references\[0\] is 3, outside the 3 choices"):
        load_metric("scienceqa_accuracy").compute(predictions=["D"], references=[3], num_choices=[3])


# ---------------------------------------------------------------- hive-shapes and zero-shot classification
def test_hive_shapes_accuracy_per_level(load_metric):
    rows = [
        ("Three.", "3", "high"),  # "three" -> "3": right
        ("A red circle", "red circle", "mid"),  # article dropped: right
        ("dark red", "red", "low"),  # wrong
        ("Striped", "striped", "low"),  # right
        ("left", "right", "high"),  # wrong
    ]
    predictions, references, levels = (list(column) for column in zip(*rows))
    result = load_metric("hive_shapes_accuracy").compute(predictions=predictions, references=references, levels=levels)
    # low 1/2, mid 1/1, high 1/2, overall 3/5.
    assert result == pytest.approx({"accuracy": 60.0, "low": 50.0, "mid": 100.0, "high": 50.0})
    with pytest.raises(ValueError, match=r"levels\[0\]"):
        load_metric("hive_shapes_accuracy").compute(predictions=["a"], references=["a"], levels=["medium"])


def test_zero_shot_accuracy_needs_the_label_as_whole_words(load_metric):
    predictions = ["It is a Cat.", "category", "a golden retriever", "a dog"]
    references = ["cat", "cat", "golden_retriever", "cat"]
    # right (case-insensitive) / wrong (inside a word) / right (underscore as space) / wrong -> 2/4.
    result = load_metric("zero_shot_accuracy").compute(predictions=predictions, references=references)
    assert result["accuracy"] == pytest.approx(50.0)
