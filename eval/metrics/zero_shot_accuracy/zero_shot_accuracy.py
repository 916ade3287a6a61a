"""Zero-shot classification accuracy of a VLM's free-form answers: the label must appear in the answer."""

import re

import datasets
import evaluate


_DESCRIPTION = """\
Zero-shot classification accuracy: 100 * share of answers in which the reference label appears, compared
case-insensitively as whole words ("cat" is found in "A cat on a mat" but not in "category"); underscores in
label names count as spaces ("golden_retriever" is found in "a golden retriever"). An answer that names
several labels counts as right when the reference is among them, as in the usual protocol.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): the label name of each image.
Returns:
    `{"accuracy": float}`, between 0 and 100.
Example:
    >>> import evaluate
    >>> zero_shot = evaluate.load("eval/metrics/zero_shot_accuracy")
    >>> zero_shot.compute(predictions=["It is a Cat."], references=["cat"])["accuracy"]
    100.0
"""


def label_in_answer(answer: str, label: str) -> bool:
    words = re.escape(label.replace("_", " ").strip().lower()).replace(r"\ ", r"\s+")
    return re.search(rf"(?<!\w){words}(?!\w)", answer.lower()) is not None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroShotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("zero_shot_accuracy needs at least one prediction.")
        for index, label in enumerate(references):
            if not label.strip():
                raise ValueError(f"references[{index}] is an empty label name.")
        correct = sum(label_in_answer(p, r) for p, r in zip(predictions, references))
        return {"accuracy": 100.0 * correct / len(predictions)}
