"""hive-shapes accuracy: exact match after light normalisation, overall and per visual level (low, mid, high)."""

import string
from collections import defaultdict

import datasets
import evaluate


_DESCRIPTION = """\
hive-shapes accuracy: 100 * share of answers equal to the reference after a light normalisation applied to
both sides: lowercase; every `string.punctuation` character becomes a space; number words zero..ten become
digits; the articles a/an/the are dropped; whitespace is collapsed. So "Three." matches "3" and "A red
circle" matches "red circle", but "dark red" does not match "red".

Reported overall and for each level present among `levels` (`low`: texture and colour, `mid`: shape and
size, `high`: count, spatial relation, comparison). This is HIVE's own benchmark; no external tool defines it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): the generator's answers.
    levels (`list[str]`): the level each question needs, one of "low", "mid", "high".
Returns:
    `{"accuracy": float, "low": float, "mid": float, "high": float}`, percentages; a level without questions
    is left out.
Example:
    >>> import evaluate
    >>> shapes = evaluate.load("eval/metrics/hive_shapes_accuracy")
    >>> shapes.compute(predictions=["Three.", "blue"], references=["3", "red"], levels=["high", "low"])
    {'accuracy': 50.0, 'low': 0.0, 'high': 100.0}
"""

LEVELS = ("low", "mid", "high")
NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = {"a", "an", "the"}
_PUNCTUATION_TO_SPACE = str.maketrans({mark: " " for mark in string.punctuation})


def normalize_answer(text: str) -> str:
    words = text.lower().translate(_PUNCTUATION_TO_SPACE).split()
    return " ".join(NUMBER_WORDS.get(word, word) for word in words if word not in ARTICLES)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HiveShapesAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "levels": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, levels):
        if not predictions:
            raise ValueError("hive_shapes_accuracy needs at least one prediction.")
        by_level = defaultdict(list)
        for index, (prediction, reference, level) in enumerate(zip(predictions, references, levels)):
            if level not in LEVELS:
                raise ValueError(f"levels[{index}] is {level!r}; expected one of {LEVELS}.")
            by_level[level].append(normalize_answer(prediction) == normalize_answer(reference))
        everything = [correct for level in LEVELS for correct in by_level[level]]
        scores = {"accuracy": 100.0 * sum(everything) / len(everything)}
        for level in LEVELS:
            if by_level[level]:
                scores[level] = 100.0 * sum(by_level[level]) / len(by_level[level])
        return scores
