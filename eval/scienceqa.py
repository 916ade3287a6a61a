"""ScienceQA-IMG test: multiple-choice science questions with an image (lmms-lab/ScienceQA layout)."""

from hive_vlm.data.prompts import ANSWER_WITH_LETTER, scienceqa_prompt

from .benchmark import HiveBenchmark, HiveExamples, first_rows, load_metric, load_published, require_columns


CONFIG = "ScienceQA-IMG"


class HiveScienceQABenchmark(HiveBenchmark):
    """
    ScienceQA-IMG test (2,017 questions) read from the lmms-lab/ScienceQA layout, configuration `ScienceQA-IMG`
    (also derek-thomas/ScienceQA, whose questions without an image are dropped): `image`, `question`, `choices`,
    `answer` (index), `hint`, ...; split `test`. The layout has no id column: questions are numbered by row.

    Prompt (LLaVA, lmms-eval's default): "Context: {hint}\\n" when there is a hint, the question, one line
    "A. choice" per choice, then "\\nAnswer with the option's letter from the given choices directly.". Scored by
    `eval/metrics/scienceqa_accuracy` (protocols `llava` and `lmms-eval`).

    Example:
        >>> HiveScienceQABenchmark().build_prompt({"hint": "", "question": "Which is a magnet?",
        ...                                        "choices": ["iron bar", "copper coin"]})
        "Which is a magnet?\\nA. iron bar\\nB. copper coin\\nAnswer with the option's letter from the given choices directly."
    """

    name = "scienceqa"
    protocols = ("llava", "lmms-eval")
    prompt_template = "[Context: {hint}\\n]{question}\\nA. {choice 0}\\nB. {choice 1}..." + ANSWER_WITH_LETTER
    split = "test"

    def load(self, path, limit=None, split=None) -> HiveExamples:
        rows = load_published(path, CONFIG, split=split or self.split)
        require_columns(rows, ("image", "question", "choices", "answer", "hint"), where=f"ScienceQA data at {path}")
        rows = rows.filter(lambda image: image is not None, input_columns="image")
        return HiveExamples(first_rows(rows, limit))

    def build_prompt(self, example: dict) -> str:
        return scienceqa_prompt(example["hint"], example["question"], example["choices"])

    def reference(self, example: dict) -> dict:
        return {"answer": int(example["answer"]), "num_choices": len(example["choices"])}

    def score(self, predictions, references, protocol) -> dict:
        return load_metric("scienceqa_accuracy").compute(
            predictions=predictions,
            references=[reference["answer"] for reference in references],
            num_choices=[reference["num_choices"] for reference in references],
            protocol=protocol,
        )
