"""OK-VQA val: open questions that need outside knowledge, 10 human answers each (lmms-lab/OK-VQA layout)."""

from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT

from .benchmark import (
    HiveBenchmark,
    HiveExamples,
    first_rows,
    load_metric,
    load_published,
    require_columns,
)


class HiveOKVQABenchmark(HiveBenchmark):
    """
    OK-VQA val (5,046 questions) read from the lmms-lab/OK-VQA layout: `question_id`, `image`, `question`,
    `answers` (10 strings), `question_type`, `answer_type`; split `val2014`.

    Prompt: the question + "\\nAnswer the question using a single word or phrase.". Scored with VQA accuracy by
    `eval/metrics/vqa_accuracy` (protocols `official`, the VQA tool's `vqaEval.py`, and `lmms-eval`).

    Example:
        >>> HiveOKVQABenchmark().build_prompt({"question": "What sport is this?"})
        'What sport is this?\\nAnswer the question using a single word or phrase.'
    """

    name = "okvqa"
    protocols = ("official", "lmms-eval")
    prompt_template = "{question}" + SHORT_ANSWER_PROMPT
    split = "val2014"
    id_column = "question_id"

    def load(self, path, limit=None, split=None) -> HiveExamples:
        rows = load_published(path, split=split or self.split)
        require_columns(rows, ("question_id", "image", "question", "answers"), where=f"OK-VQA data at {path}")
        return HiveExamples(first_rows(rows, limit))

    def build_prompt(self, example: dict) -> str:
        return example["question"] + SHORT_ANSWER_PROMPT

    def reference(self, example: dict) -> dict:
        return {"answers": list(example["answers"])}

    def score(self, predictions, references, protocol) -> dict:
        answers = [reference["answers"] for reference in references]
        return load_metric("vqa_accuracy").compute(predictions=predictions, references=answers, protocol=protocol)
