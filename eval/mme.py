"""MME: yes/no questions about perception and cognition, two per image (lmms-lab/MME layout)."""

from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT, mme_prompt

from .benchmark import HiveBenchmark, HiveExamples, load_metric, load_published, numbered_ids, require_columns


class HiveMMEBenchmark(HiveBenchmark):
    """
    MME (2,374 questions, two per image) read from the lmms-lab/MME layout: `question_id` (the image path, shared
    by the two questions of an image), `image`, `question`, `answer` ("Yes"/"No"), `category`; split `test`.

    The prompt is lmms-eval's: the question, stripped, without " Please answer yes or no.", followed by
    "\\nAnswer the question using a single word or phrase.". Scored by `eval/metrics/mme` (protocols
    `official`, MME's `calculation.py`, and `lmms-eval`). `limit` keeps whole images: the questions of the
    first images until at least `limit` questions are taken.

    Example:
        >>> HiveMMEBenchmark().build_prompt({"question": "Is there a dog? Please answer yes or no."})
        'Is there a dog?\\nAnswer the question using a single word or phrase.'
    """

    name = "mme"
    protocols = ("official", "lmms-eval")
    prompt_template = "{question, without ' Please answer yes or no.'}" + SHORT_ANSWER_PROMPT
    split = "test"
    columns = ("question_id", "image", "question", "answer", "category")

    def load(self, path, limit=None, split=None) -> HiveExamples:
        rows = load_published(path, split=split or self.split)
        require_columns(rows, self.columns, where=f"MME data at {path}")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1, got {limit}.")
            question_ids = rows["question_id"]
            kept_images, keep = set(), []
            for index, question_id in enumerate(question_ids):
                if question_id not in kept_images and len(keep) >= limit:
                    continue
                kept_images.add(question_id)
                keep.append(index)
            rows = rows.select(keep)
        return HiveExamples(rows)

    def example_ids(self, rows) -> list[str]:
        return numbered_ids(rows["question_id"], "#")

    def build_prompt(self, example: dict) -> str:
        return mme_prompt(example["question"])

    def reference(self, example: dict) -> dict:
        return {"answer": example["answer"], "question_id": example["question_id"], "category": example["category"]}

    def score(self, predictions, references, protocol) -> dict:
        return load_metric("mme").compute(
            predictions=predictions,
            references=[reference["answer"] for reference in references],
            question_ids=[reference["question_id"] for reference in references],
            categories=[reference["category"] for reference in references],
            protocol=protocol,
        )
