"""hive-shapes: HIVE's synthetic benchmark, scored per visual level (low, mid, high)."""


import datasets

from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT

from .benchmark import HiveBenchmark, HiveExamples, first_rows, load_metric, load_published, numbered_ids


QUESTION_COLUMNS = ("image", "question", "answer", "level")


class HiveShapesBenchmark(HiveBenchmark):
    """
    hive-shapes questions, each tagged with the level of visual features it needs: `low` (texture, colour), `mid`
    (shape, size) or `high` (count, spatial relation, comparison). Split `test` by default (also `validation`,
    `test_compositional`, ...).

    Two layouts are read, from a `save_to_disk` folder, parquet files or a Hub id:
    - one row per question: `image`, `question`, `answer`, `level`, and an id in `id` or `question_id` (else
      `scene_id` plus the question's rank within its scene, else the row number); `hive_vlm.data.shapes_layouts.
      to_vqa` writes it;
    - one row per scene, as `hive data shapes` writes it: `image`, `scene_id`, `questions` (a list of
      {`question`, `answer`, `level`, ...}); each question is then `{scene_id}/{rank}`.

    Prompt: the question + "\\nAnswer the question using a single word or phrase." (the suffix of the stage-3
    conversations). Scored by `eval/metrics/hive_shapes_accuracy`: exact match after lowercasing, punctuation
    removal, number words to digits and dropping articles, overall and per level.

    Example:
        >>> HiveShapesBenchmark().build_prompt({"question": "What colour is the circle?"})
        'What colour is the circle?\\nAnswer the question using a single word or phrase.'
    """

    name = "hive-shapes"
    protocols = ("normalized-exact-match",)
    prompt_template = "{question}" + SHORT_ANSWER_PROMPT
    split = "test"

    def load(self, path, limit=None, split=None) -> HiveExamples:
        rows = load_published(path, split=split or self.split)
        if "questions" in rows.column_names:
            return self._questions_of_scenes(rows, limit, where=f"hive-shapes scenes at {path}")
        missing = [column for column in QUESTION_COLUMNS if column not in rows.column_names]
        if missing:
            raise ValueError(
                f"hive-shapes data at {path} lacks the column(s) {missing}; expected one row per question "
                f"({', '.join(QUESTION_COLUMNS)}) or one row per scene (image, scene_id, questions). It has "
                f"{rows.column_names}."
            )
        return HiveExamples(first_rows(rows, limit))

    @staticmethod
    def _questions_of_scenes(scenes, limit, where) -> HiveExamples:
        if "scene_id" not in scenes.column_names or "image" not in scenes.column_names:
            raise ValueError(f"{where} lacks `scene_id` or `image`; it has {scenes.column_names}.")
        columns = {"id": [], "question": [], "answer": [], "level": []}
        image_index = []
        for scene_row, (scene_id, questions) in enumerate(zip(scenes["scene_id"], scenes["questions"])):
            for rank, question in enumerate(questions):
                columns["id"].append(f"{scene_id}/{rank}")
                for key in ("question", "answer", "level"):
                    columns[key].append(question[key])
                image_index.append(scene_row)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be at least 1, got {limit}.")
            columns = {key: values[:limit] for key, values in columns.items()}
            image_index = image_index[:limit]
        return HiveExamples(datasets.Dataset.from_dict(columns), images=scenes, image_index=image_index)

    def example_ids(self, rows) -> list[str]:
        for column in ("id", "question_id"):
            if column in rows.column_names:
                return [str(value) for value in rows[column]]
        if "scene_id" in rows.column_names:
            return numbered_ids(rows["scene_id"], "/")
        return super().example_ids(rows)

    def build_prompt(self, example: dict) -> str:
        return example["question"] + SHORT_ANSWER_PROMPT

    def reference(self, example: dict) -> dict:
        return {"answer": example["answer"], "level": example["level"]}

    def score(self, predictions, references, protocol) -> dict:
        return load_metric("hive_shapes_accuracy").compute(
            predictions=predictions,
            references=[reference["answer"] for reference in references],
            levels=[reference["level"] for reference in references],
        )
