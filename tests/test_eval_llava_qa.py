"""llava-qa: a user's held-out LLaVA-format test file (JSON or JSONL), scored by VQA accuracy overall and per level."""

import json

import PIL.Image
import pytest

from eval_fixtures import COLORS, FakePredictor, color_of
from hive_vlm.cli import main as hive
from hive_vlm.eval import cli as eval_cli
from hive_vlm.eval.benchmark import to_rgb
from hive_vlm.eval.llava_qa import HiveLlavaQABenchmark
from hive_vlm.eval.runner import evaluate_benchmark, generate_answers


SUFFIX = "\nAnswer the question using a single word or phrase."


def turns(*pairs):
    return [{"from": speaker, "value": value} for speaker, value in pairs]


RECORDS = [
    # A lone gpt reference: "Red" matches it under lmms-eval (normalised), not under official (unanimous answers
    # are compared verbatim).
    {"id": "q1", "image": "imgs/red.png", "level": "low",
     "conversations": turns(("human", "<image>\nWhat colour is the cube?"), ("gpt", "red"))},
    # `answers` replaces the gpt turn; "<image>" after the question.
    {"id": "q2", "image": "imgs/green.png", "level": "high", "answers": ["2", "2", "two", "3"],
     "conversations": turns(("human", "How many cubes are there?\n<image>"), ("gpt", "4"))},
    # Two answers, the prediction matches one of them.
    {"id": "q3", "image": "imgs/blue.png", "level": "mid", "answers": ["cube", "box"],
     "conversations": turns(("human", "<image>\nWhat shape is it?"), ("gpt", "a cube"))},
    # Multi-turn: only the first human/gpt pair is a question.
    {"id": "q4", "image": "imgs/red.png", "level": "low",
     "conversations": turns(("human", "<image>\nIs it shiny?"), ("gpt", "no"), ("human", "Why?"), ("gpt", "matte"))},
    # The question already carries the short-answer instruction (as LLaVA-1.5's VQA data does): not added twice.
    {"id": "q5", "image": "imgs/blue.png", "level": "mid",
     "conversations": turns(("human", "<image>\nWhat size is it?" + SUFFIX), ("gpt", "large"))},
]  # fmt: skip
PROMPTS = [
    "What colour is the cube?" + SUFFIX,
    "How many cubes are there?" + SUFFIX,
    "What shape is it?" + SUFFIX,
    "Is it shiny?" + SUFFIX,
    "What size is it?" + SUFFIX,
]
REFERENCES = [
    {"answers": ["red"], "level": "low"},
    {"answers": ["2", "2", "two", "3"], "level": "high"},
    {"answers": ["cube", "box"], "level": "mid"},
    {"answers": ["no"], "level": "low"},
    {"answers": ["large"], "level": "mid"},
]
COLOURS = ["red", "green", "blue", "red", "blue"]
PREDICTIONS = ["Red", "two", "cube", "yes", "large"]
ANSWERS = {(colour, prompt): answer for colour, prompt, answer in zip(COLOURS, PROMPTS, PREDICTIONS)}

# VQA accuracy of one question: the mean, over leaving out each reference answer, of min(1, matches among the
# others / 3); a lone reference counts as ten agreeing answers.
LMMS_EVAL = [
    1.0,  # "Red" -> "red": each of the 10 copies leaves 9 matches -> min(1, 9/3) = 1
    (2 / 3 + 2 / 3 + 2 / 3 + 1) / 4,  # "two" -> "2" matches 3 of 4: leaving out a match, 2/3; leaving out "3", 1
    (0 + 1 / 3) / 2,  # "cube" matches 1 of 2: leaving out "cube", 0 matches; leaving out "box", 1/3
    0.0,  # "yes" vs "no"
    1.0,  # "large", lone reference
]
OFFICIAL = [0.0] + LMMS_EVAL[1:]  # official compares unanimous answers verbatim: "Red" != "red"


def percent(values):
    return 100 * sum(values) / len(values)


def expected_scores(per_question):
    low, high, mid = [per_question[i] for i in (0, 3)], [per_question[1]], [per_question[i] for i in (2, 4)]
    return {"vqa_accuracy": percent(per_question), "low": percent(low), "high": percent(high), "mid": percent(mid)}


def write_images(root):
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for colour, rgb in COLORS.items():
        PIL.Image.new("RGB", (8, 8), rgb).save(root / "imgs" / f"{colour}.png")


def write_records(path, records, jsonl=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture
def test_json(tmp_path):
    write_images(tmp_path)
    return write_records(tmp_path / "test.json", RECORDS)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_reads_json_and_jsonl_with_prompts_references_and_images(tmp_path, suffix):
    write_images(tmp_path)
    path = write_records(tmp_path / f"test{suffix}", RECORDS, jsonl=suffix == ".jsonl")
    benchmark = HiveLlavaQABenchmark()
    examples = benchmark.load(path)
    assert len(examples) == 5
    assert benchmark.example_ids(examples.rows) == ["q1", "q2", "q3", "q4", "q5"]
    rows = [examples.rows[index] for index in range(len(examples))]
    assert [benchmark.build_prompt(row) for row in rows] == PROMPTS
    assert [benchmark.reference(row) for row in rows] == REFERENCES
    assert [color_of(examples.image(index)) for index in range(len(examples))] == COLOURS
    assert benchmark.load(path, limit=2).rows["id"] == ["q1", "q2"]


def test_records_without_ids_are_numbered_by_row(tmp_path):
    write_images(tmp_path)
    records = [{key: value for key, value in record.items() if key != "id"} for record in RECORDS[:2]]
    examples = HiveLlavaQABenchmark().load(write_records(tmp_path / "test.json", records))
    assert HiveLlavaQABenchmark().example_ids(examples.rows) == ["0", "1"]


def test_image_paths_are_relative_to_image_root_else_to_the_file(tmp_path):
    write_images(tmp_path / "data")
    path = write_records(tmp_path / "splits" / "test.jsonl", RECORDS, jsonl=True)
    with pytest.raises(ValueError, match=r"row 0 \(id 'q1'\).*imgs/red\.png.*image_root"):
        HiveLlavaQABenchmark().load(path)  # the file's folder holds no imgs/
    examples = HiveLlavaQABenchmark(image_root=tmp_path / "data").load(path)
    assert [color_of(examples.image(index)) for index in range(len(examples))] == COLOURS


@pytest.mark.parametrize("protocol, per_question", [("lmms-eval", LMMS_EVAL), ("official", OFFICIAL)])
def test_vqa_accuracy_overall_and_per_level(test_json, protocol, per_question):
    benchmark = HiveLlavaQABenchmark()
    examples = benchmark.load(test_json)
    references = [benchmark.reference(examples.rows[index]) for index in range(len(examples))]
    scores = benchmark.score(PREDICTIONS, references, protocol)
    assert list(scores) == ["vqa_accuracy", "low", "high", "mid"]  # overall first, then levels as first seen
    assert scores == pytest.approx(expected_scores(per_question))


def test_groups_come_from_type_when_there_is_no_level_and_are_absent_without_either(tmp_path):
    write_images(tmp_path)
    benchmark = HiveLlavaQABenchmark()
    typed = [{**{k: v for k, v in record.items() if k != "level"}, "type": kind}
             for record, kind in zip(RECORDS, ["colour", "count", "shape", "colour", "size"])]  # fmt: skip
    examples = benchmark.load(write_records(tmp_path / "typed.json", typed))
    references = [benchmark.reference(examples.rows[index]) for index in range(len(examples))]
    assert references[1] == {"answers": ["2", "2", "two", "3"], "type": "count"}
    scores = benchmark.score(PREDICTIONS, references, "lmms-eval")
    assert scores == pytest.approx({"vqa_accuracy": percent(LMMS_EVAL), "colour": 50.0, "count": 75.0,
                                    "shape": 100 / 6, "size": 100.0})  # fmt: skip

    plain = [{k: v for k, v in record.items() if k != "level"} for record in RECORDS]
    examples = benchmark.load(write_records(tmp_path / "plain.json", plain))
    references = [benchmark.reference(examples.rows[index]) for index in range(len(examples))]
    assert references[0] == {"answers": ["red"]}
    assert benchmark.score(PREDICTIONS, references, "lmms-eval") == pytest.approx({"vqa_accuracy": percent(LMMS_EVAL)})


def test_runner_writes_the_results_with_per_level_scores(test_json, tmp_path):
    out = tmp_path / "results" / "llava-qa.json"
    predictor = FakePredictor(ANSWERS)
    results = evaluate_benchmark(HiveLlavaQABenchmark(), test_json, predictor, out, batch_size=2, progress=False)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(results))
    assert written["benchmark"] == "llava-qa" and written["protocol"] == "lmms-eval" and written["split"] == "test"
    assert written["scores"] == pytest.approx(expected_scores(LMMS_EVAL))
    assert written["scores"] == pytest.approx({"vqa_accuracy": 175 / 3, "low": 50.0, "high": 75.0, "mid": 175 / 3})
    assert [sample["id"] for sample in written["samples"]] == ["q1", "q2", "q3", "q4", "q5"]
    assert [sample["prompt"] for sample in written["samples"]] == PROMPTS
    assert [sample["reference"] for sample in written["samples"]] == REFERENCES
    assert predictor.batch_sizes == [2, 2, 1]
    official = evaluate_benchmark(HiveLlavaQABenchmark(), test_json, FakePredictor(ANSWERS), tmp_path / "o.json",
                                  protocol="official", progress=False)  # fmt: skip
    assert official["scores"] == pytest.approx(expected_scores(OFFICIAL))


# ------------------------------------------------------------------------------------------------- bad inputs
def bad(tmp_path, records, jsonl=False):
    write_images(tmp_path)
    return write_records(tmp_path / ("bad.jsonl" if jsonl else "bad.json"), records, jsonl=jsonl)


def test_a_missing_image_file_names_the_record_and_the_file(tmp_path):
    path = bad(tmp_path, [RECORDS[0], {**RECORDS[1], "image": "imgs/missing.png"}])
    with pytest.raises(ValueError, match=r"row 1 \(id 'q2'\) of .*bad\.json: image .*imgs/missing\.png.*image_root"):
        HiveLlavaQABenchmark().load(path)


def test_a_record_without_a_gpt_answer_or_answers_names_the_record_and_the_fix(tmp_path):
    no_answer = {"id": "lonely", "image": "imgs/red.png", "level": "low",
                 "conversations": turns(("human", "<image>\nWhat?"))}  # fmt: skip
    with pytest.raises(ValueError, match=r"row 1 \(id 'lonely'\).*no reference answer.*gpt turn.*'answers'"):
        HiveLlavaQABenchmark().load(bad(tmp_path, [RECORDS[0], no_answer]))
    # The same record with `answers` is a question.
    examples = HiveLlavaQABenchmark().load(bad(tmp_path, [RECORDS[0], {**no_answer, "answers": ["x"]}]))
    assert examples.rows["answers"] == [["red"], ["x"]]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"conversations": turns(("human", "<image>\nWhat?"), ("gpt", "red"))},
         r"row 0 of .*bad\.json has no 'image'.*remove"),
        ({"id": 7, "image": "imgs/red.png", "conversations": turns(("gpt", "red"))},
         r"row 0 \(id 7\) of .*has no human turn"),
        ({"image": "imgs/red.png", "conversations": turns(("human", "<image>"), ("gpt", "red"))}, "no question"),
        ({"image": "imgs/red.png", "conversations": []}, "missing field 'conversations'"),
        ({**RECORDS[0], "answers": "red"}, "'answers' must be a non-empty list"),
        ({**RECORDS[0], "answers": []}, "'answers' must be a non-empty list"),
        ({**RECORDS[0], "level": "vqa_accuracy"}, "overall score"),
        ({**RECORDS[0], "level": None}, r"has 'level' set to None.*every record needs one"),
    ],
)  # fmt: skip
def test_malformed_records_raise_a_value_error_naming_them(tmp_path, record, message):
    with pytest.raises(ValueError, match=message):
        HiveLlavaQABenchmark().load(bad(tmp_path, [record]))


def test_a_level_on_some_records_only_is_refused(tmp_path):
    unlevelled = {k: v for k, v in RECORDS[1].items() if k != "level"}
    with pytest.raises(ValueError, match=r"row 1 \(id 'q2'\) of .* has no 'level'.*every record needs one"):
        HiveLlavaQABenchmark().load(bad(tmp_path, [RECORDS[0], unlevelled]))


def test_malformed_files_raise_clear_errors(tmp_path):
    write_images(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "q1", "image": ')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON.*JSON list in a \.json file"):
        HiveLlavaQABenchmark().load(broken)
    lines = tmp_path / "lines.json"  # JSON Lines under a .json name
    lines.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    with pytest.raises(ValueError, match=r"not valid JSON.*one JSON object per line in a \.jsonl file"):
        HiveLlavaQABenchmark().load(lines)
    mapping = write_records(tmp_path / "mapping.json", {"data": RECORDS})
    with pytest.raises(ValueError, match="must hold a JSON list"):
        HiveLlavaQABenchmark().load(mapping)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(RECORDS[0]) + "\n" + '{"id": "q2", "ima\n')
    with pytest.raises(ValueError, match=r"torn\.jsonl: row 1 is not valid JSON"):
        HiveLlavaQABenchmark().load(torn)
    with pytest.raises(ValueError, match="is not a file"):
        HiveLlavaQABenchmark().load(tmp_path / "imgs")
    with pytest.raises(ValueError, match="no splits"):
        HiveLlavaQABenchmark().load(write_records(tmp_path / "ok.json", RECORDS), split="validation")


# ------------------------------------------------------------------------------------------------- hive eval
def test_the_hive_eval_registry_maps_llava_qa_to_the_adapter(tmp_path):
    assert "llava-qa" in eval_cli.NAMES
    assert isinstance(eval_cli.benchmarks()["llava-qa"], HiveLlavaQABenchmark)
    adapter = eval_cli.benchmark_adapter("llava-qa", image_root=tmp_path)
    assert isinstance(adapter, HiveLlavaQABenchmark) and adapter.image_root == str(tmp_path)


@pytest.fixture(scope="module")
def corpus():
    return [prompt + " " + answer for prompt, answer in zip(PROMPTS, PREDICTIONS)]


def test_hive_eval_llava_qa_with_image_root_and_a_tiny_hive_model(saved_folder, model, processor, tmp_path, capsys):
    folder = saved_folder
    write_images(tmp_path / "data")
    path = write_records(tmp_path / "splits" / "test.jsonl", RECORDS, jsonl=True)
    out = tmp_path / "llava-qa.json"
    args = ["eval", "--model", str(folder), "--benchmark", "llava-qa", "--data", str(path), "--batch-size", "2",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert hive(args) == 2  # the images are not beside the file
    assert "hive eval: error: row 0 (id 'q1')" in capsys.readouterr().err and not out.exists()
    assert hive([*args, "--image-root", str(tmp_path / "data")]) == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "llava-qa" and results["protocol"] == "lmms-eval"
    assert [sample["prompt"] for sample in results["samples"]] == PROMPTS
    assert "llava-qa (lmms-eval)" in capsys.readouterr().out
    # The predictions are the saved model's own greedy answers for each (image, prompt), scored by the adapter.
    images = [to_rgb(PIL.Image.new("RGB", (8, 8), COLORS[colour])) for colour in COLOURS]
    predictions = generate_answers(model, processor, images, PROMPTS, max_new_tokens=16)
    assert [sample["prediction"] for sample in results["samples"]] == predictions
    expected = HiveLlavaQABenchmark().score(predictions, REFERENCES, "lmms-eval")
    assert set(results["scores"]) == {"vqa_accuracy", "low", "mid", "high"}
    assert results["scores"] == pytest.approx(expected)


def test_hive_eval_refuses_an_image_root_for_other_benchmarks(tmp_path, capsys):
    code = hive(["eval", "--model", str(tmp_path), "--benchmark", "okvqa", "--data", str(tmp_path),
                 "--image-root", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 2 and "--image-root applies to llava-qa only" in capsys.readouterr().err
