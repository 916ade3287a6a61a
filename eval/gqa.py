"""GQA testdev-balanced: compositional questions about real images (lmms-lab/GQA layout)."""

from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT

from .benchmark import HiveBenchmark, HiveExamples, load_metric, load_published, require_columns


INSTRUCTIONS = "testdev_balanced_instructions"
IMAGES = "testdev_balanced_images"


class HiveGQABenchmark(HiveBenchmark):
    """
    GQA testdev-balanced read from the lmms-lab/GQA layout: the `testdev_balanced_instructions` configuration (`id`,
    `imageId`, `question`, `answer`, `isBalanced`, ...) joined on `imageId` with the `id` of the
    `testdev_balanced_images` configuration (`id`, `image`); split `testdev`. A dataset that already holds an
    `image` column (e.g. a joined `save_to_disk` folder) is read as is. Only rows with `isBalanced` true are kept
    when the column exists.

    Prompt: the question + "\\nAnswer the question using a single word or phrase.". Scored by
    `eval/metrics/gqa_accuracy` (protocols `official`, `llava`, `lmms-eval`).

    Example:
        >>> HiveGQABenchmark().build_prompt({"question": "Which side is the cup on?"})
        'Which side is the cup on?\\nAnswer the question using a single word or phrase.'
    """

    name = "gqa"
    protocols = ("official", "llava", "lmms-eval")
    prompt_template = "{question}" + SHORT_ANSWER_PROMPT
    split = "testdev"
    id_column = "id"

    def load(self, path, limit=None, split=None) -> HiveExamples:
        split = split or self.split
        rows = load_published(path, INSTRUCTIONS, split=split)
        where = f"GQA instructions at {path}"
        require_columns(rows, ("id", "question", "answer"), where=where)
        if "isBalanced" in rows.column_names:
            rows = rows.filter(lambda balanced: bool(balanced), input_columns="isBalanced")
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1, got {limit}.")
            rows = rows.select(range(min(limit, len(rows))))
        if "image" in rows.column_names:
            return HiveExamples(rows)

        require_columns(rows, ("imageId",), where=where)
        images = load_published(path, IMAGES, split=split)
        require_columns(images, ("id", "image"), where=f"GQA images at {path}")
        row_of_image = {image_id: index for index, image_id in enumerate(images["id"])}
        image_index = []
        for question_id, image_id in zip(rows["id"], rows["imageId"]):
            if image_id not in row_of_image:
                raise ValueError(f"GQA question {question_id} needs image {image_id!r}, missing from {IMAGES} at {path}.")
            image_index.append(row_of_image[image_id])
        return HiveExamples(rows, images=images, image_index=image_index)

    def build_prompt(self, example: dict) -> str:
        return example["question"] + SHORT_ANSWER_PROMPT

    def reference(self, example: dict) -> dict:
        return {"answer": example["answer"]}

    def score(self, predictions, references, protocol) -> dict:
        answers = [reference["answer"] for reference in references]
        return load_metric("gqa_accuracy").compute(predictions=predictions, references=answers, protocol=protocol)
