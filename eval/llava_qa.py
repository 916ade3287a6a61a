"""llava-qa: a held-out test file in LLaVA's conversation format (as HIVE fine-tunes on), scored by VQA accuracy."""

import os

import datasets

from hive_vlm.data.loaders import ASSISTANT_ROLES, IMAGE_TAG, USER_ROLES, image_error, read_records
from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT

from .benchmark import HiveBenchmark, HiveExamples, load_metric


METRIC_KEY = "vqa_accuracy"
GROUP_FIELDS = ("level", "type")  # the first one any record carries groups the scores
LONE_ANSWER_COPIES = 10  # a single reference counts as ten agreeing annotators (see `HiveLlavaQABenchmark.score`)


class HiveLlavaQABenchmark(HiveBenchmark):
    """
    Questions from a LLaVA-format file: a JSON list of records (LLaVA's published `.json`), or one record per line
    (`.jsonl`), as `hive train` reads them for stage 3 (`hive_vlm.data.loaders.load_conversations`):

        {"id": "q1", "image": "imgs/a.png",
         "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the cube?"},
                           {"from": "gpt", "value": "red"}],
         "answers": ["red", "dark red"],  # optional: the reference answers; default: the gpt turn's value
         "level": "low"}                  # optional group (`level`, else `type`): accuracy per group

    One question per record: the first human turn, with the `<image>` tag removed and the ends stripped as in
    training, is the question, and the first gpt turn after it the reference. Further turns of a multi-turn
    record are ignored (only its first human/gpt pair is scored). A leading `system` turn is skipped. The
    question id is the record's `id`, else its row number in the file.

    Prompt: the question + "\\nAnswer the question using a single word or phrase.", unless the question already
    ends with that instruction (LLaVA-1.5's VQA data carries it), when it is sent unchanged.

    Scored with VQA accuracy by `eval/metrics/vqa_accuracy`, protocols `lmms-eval` (default: the prediction and
    answers are always normalised — case, punctuation, articles, number words — as LLaVA's and lmms-eval's VQA
    scripts do) and `official` (the VQA tool's `vqaEval.py`; it normalises nothing when all the answers agree,
    so a lone reference is then matched exactly, case included). VQA accuracy averages min(1, matches among
    the other answers / 3) over leaving out each answer, so:
    - a record with a single reference (no `answers`, or a one-item list) counts it as ten agreeing annotators:
      a matching prediction scores 100, any other 0;
    - with an `answers` list, a prediction matching only some of them earns partial credit, as in VQAv2 (one
      match in ["red", "dark red"] scores 1/6); repeat an answer to weight it (it takes 4 matches to score 100).

    When the records carry `level` (else `type`), the scores hold, after `vqa_accuracy`, the accuracy of each
    group value under its own name (the same metric on that group's questions), as hive-shapes reports its
    levels: `{"vqa_accuracy": 61.0, "low": 70.0, "mid": 55.0, "high": 58.0}`. Then every record needs one.

    The file has no splits: `split` is `test` and no other is accepted.

    Args:
        image_root (`str` or `os.PathLike`, *optional*): the folder the records' image paths are relative to;
            defaults to the folder of the file being loaded. Absolute image paths are used as they are.

    Raises:
        ValueError: from `load`, naming the record (row and id) and the fix, for a record without an image, an
            image that cannot be read, a record without a human turn, a record with neither a gpt answer nor
            `answers`, a missing group value, a group named `vqa_accuracy`, or a file that is not LLaVA JSON.

    Example:
        >>> benchmark = HiveLlavaQABenchmark(image_root="data/")
        >>> benchmark.build_prompt({"question": "What colour is the cube?"})
        'What colour is the cube?\\nAnswer the question using a single word or phrase.'
        >>> from hive_vlm.eval.runner import evaluate_benchmark
        >>> results = evaluate_benchmark(benchmark, "test.json", predict, "results/llava-qa.json")  # doctest: +SKIP
        >>> results["scores"]  # doctest: +SKIP
        {'vqa_accuracy': 61.0, 'low': 70.0, 'mid': 55.0, 'high': 58.0}
    """

    name = "llava-qa"
    protocols = ("lmms-eval", "official")
    prompt_template = "{question}" + SHORT_ANSWER_PROMPT
    split = "test"
    id_column = "id"

    def __init__(self, image_root=None):
        self.image_root = None if image_root is None else os.fspath(image_root)

    def load(self, path, limit=None, split=None) -> HiveExamples:
        if split not in (None, self.split):
            raise ValueError(
                f"llava-qa reads one file, which has no splits (asked for split {split!r}); pass the file of that "
                "split as the data instead."
            )
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}.")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"llava-qa data {path!r} is not a file; pass a LLaVA-format .json or .jsonl file.")
        root = self.image_root if self.image_root is not None else os.path.dirname(os.path.abspath(path))
        root = os.path.abspath(root)
        try:
            records = list(read_records(path))
        except ValueError as error:
            raise ValueError(
                f"{error} llava-qa reads LLaVA records: a JSON list in a .json file, or one JSON object per line in "
                "a .jsonl file."
            ) from None
        questions = [_question(record, _describe(number, record, path)) for number, record in records]
        group_field = next((field for field in GROUP_FIELDS if any(field in question for question in questions)), None)
        if group_field is not None:
            for (number, record), question in zip(records, questions):
                _check_group(question, group_field, _describe(number, record, path))
        if limit is not None:
            records, questions = records[:limit], questions[:limit]
        images = []
        for (number, record), question in zip(records, questions):
            file = os.path.join(root, question["image"])
            error = image_error(file)
            if error is not None:
                raise ValueError(
                    f"{_describe(number, record, path)}: image {file!r} cannot be read ({error}). Fix the file, or "
                    f"pass the folder the image paths are relative to as image_root (hive eval --image-root); "
                    f"it is now {root!r}."
                )
            images.append(file)
        columns = {
            "id": [str(record["id"]) if record.get("id") is not None else str(number) for number, record in records],
            "image": images,
            "question": [question["question"] for question in questions],
            "answers": [question["answers"] for question in questions],
        }
        string = datasets.Value("string")
        features = {"id": string, "image": datasets.Image(decode=False), "question": string,
                    "answers": datasets.List(string)}  # fmt: skip
        if group_field is not None:
            columns[group_field] = [question[group_field] for question in questions]
            features[group_field] = string
        return HiveExamples(datasets.Dataset.from_dict(columns, features=datasets.Features(features)))

    def build_prompt(self, example: dict) -> str:
        question = example["question"]
        if question.endswith(SHORT_ANSWER_PROMPT.strip()):
            return question
        return question + SHORT_ANSWER_PROMPT

    def reference(self, example: dict) -> dict:
        reference = {"answers": list(example["answers"])}
        for field in GROUP_FIELDS:
            if example.get(field) is not None:
                reference[field] = example[field]
        return reference

    def score(self, predictions, references, protocol) -> dict:
        """VQA accuracy overall and, when the references carry a group, per group value (first-seen order)."""
        metric = load_metric("vqa_accuracy")

        def accuracy(indices) -> float:
            answers = [_scored_answers(references[index]["answers"]) for index in indices]
            chosen = [predictions[index] for index in indices]
            return metric.compute(predictions=chosen, references=answers, protocol=protocol)[METRIC_KEY]

        scores = {METRIC_KEY: accuracy(range(len(predictions)))}
        field = next((field for field in GROUP_FIELDS if any(field in reference for reference in references)), None)
        if field is None:
            return scores
        groups = {}
        for index, reference in enumerate(references):
            group = reference.get(field)
            if group is None:
                raise ValueError(f"reference {index} has no {field!r} while others do; give every question one.")
            if group == METRIC_KEY:
                raise ValueError(f"a {field} is named {METRIC_KEY!r}, which would overwrite the overall score.")
            groups.setdefault(group, []).append(index)
        for group, indices in groups.items():
            scores[group] = accuracy(indices)
        return scores


def _scored_answers(answers: list[str]) -> list[str]:
    """The answers given to VQA accuracy: a lone reference repeated, so that matching it scores 100 (not 0)."""
    return list(answers) * LONE_ANSWER_COPIES if len(answers) == 1 else list(answers)


def _describe(number: int, record, path: str) -> str:
    where = f"row {number}"
    if isinstance(record, dict) and record.get("id") is not None:
        where += f" (id {record['id']!r})"
    return f"{where} of {path}"


def _question(record, where: str) -> dict:
    """{image, question, answers[, level/type]} of one LLaVA record; ValueError naming `where` and the fix."""
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected an object with 'image' and 'conversations', got {type(record).__name__}."
        )
    image = record.get("image")
    if image is None:
        raise ValueError(
            f"{where} has no 'image'; llava-qa scores questions about an image. Give it an 'image' path (relative "
            "to the image root), or remove the record from the test file."
        )
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: 'image' must be one non-empty path string, got {image!r}.")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: missing field 'conversations' (a non-empty list of turns).")
    question = answer = None
    for number, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise ValueError(f"{where}: turn {number} must have the string fields 'from' and 'value', got {turn!r}.")
        if question is None and turn["from"] in USER_ROLES:
            question = turn["value"].replace(IMAGE_TAG, "").strip()
            if not question:
                raise ValueError(f"{where}: the first human turn holds no question besides {IMAGE_TAG}; write one.")
        elif question is not None and turn["from"] in ASSISTANT_ROLES:
            answer = turn["value"].strip()
            break
    if question is None:
        raise ValueError(
            f"{where} has no human turn; the question is the first turn with 'from': 'human'. Add one, or remove "
            "the record."
        )
    if "answers" in record:
        answers = record["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"{where}: 'answers' must be a non-empty list of non-empty strings, got {answers!r}.")
    elif answer:
        answers = [answer]
    else:
        raise ValueError(
            f"{where} has no reference answer: add a gpt turn answering the first human turn, or an 'answers' "
            "list."
        )
    parsed = {"image": image, "question": question, "answers": list(answers)}
    for field in GROUP_FIELDS:
        if field in record:
            parsed[field] = record[field]
    return parsed


def _check_group(question: dict, field: str, where: str) -> None:
    """Every record names its group in `field` (a string or a number, stored as a string), never `vqa_accuracy`."""
    value = question.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        found = f"{field!r} set to {value!r}" if field in question else f"no {field!r}"
        raise ValueError(
            f"{where} has {found}; when any record has a {field!r}, every record needs one (a string or a number), "
            "since the scores are reported per group."
        )
    value = str(value)
    if value == METRIC_KEY:
        raise ValueError(
            f"{where}: the {field} {value!r} would take the key of the overall score in the results; rename it."
        )
    question[field] = value
