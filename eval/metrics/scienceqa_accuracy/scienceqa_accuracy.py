"""ScienceQA multiple-choice accuracy, with LLaVA's answer parsing or lmms-eval's."""

import re

import datasets
import evaluate


_DESCRIPTION = """\
ScienceQA accuracy: 100 * share of questions whose parsed letter is the answer's letter (A for index 0).

`protocol="llava"` follows haotian-liu/LLaVA `llava/eval/eval_science_qa.py` (LLaVA-1.5), quirks included:
the answer (not stripped) is taken as the letter when it is exactly one of A-E; else when it starts with
"X. " for X in A-E; else when the case-sensitive pattern `The answer is ([A-Z]).` (the final `.` matches any
character) is found exactly once; otherwise parsing failed and the question is wrong. A letter beyond the
number of choices is wrong.

`protocol="lmms-eval"` follows lmms-eval's ScienceQA task: the stripped answer equals the target letter
ignoring case, or its first character is an uppercase letter followed by "." and equal to the target.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[int]`): the index of the right choice.
    num_choices (`list[int]`): how many choices each question offered.
    protocol (`str`, defaults to `"llava"`): `"llava"` or `"lmms-eval"`.
Returns:
    `{"accuracy": float}`, between 0 and 100.
Example:
    >>> import evaluate
    >>> sqa = evaluate.load("eval/metrics/scienceqa_accuracy")
    >>> sqa.compute(predictions=["B. a magnet"], references=[1], num_choices=[2])["accuracy"]
    100.0
"""

_CITATION = """\
@inproceedings{lu2022learn,
  title={Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering},
  author={Lu, Pan and Mishra, Swaroop and Xia, Tony and others},
  booktitle={NeurIPS},
  year={2022}
}
"""

PROTOCOLS = ("llava", "lmms-eval")
LLAVA_OPTIONS = "ABCDE"
LLAVA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def llava_choice(prediction: str, num_choices: int) -> int:
    """The index LLaVA parses from an answer, or -1 when parsing fails or the letter is not a choice."""
    if len(prediction) == 1 and prediction in LLAVA_OPTIONS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in LLAVA_OPTIONS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        found = LLAVA_ANSWER_IS.findall(prediction)
        letter = found[0] if len(found) == 1 else None
    if letter is None or letter not in LLAVA_OPTIONS[:num_choices]:
        return -1
    return LLAVA_OPTIONS.index(letter)


def lmms_eval_correct(prediction: str, answer: int) -> bool:
    target = chr(ord("A") + answer).lower()
    prediction = prediction.strip()
    if prediction.lower() == target:
        return True
    if len(prediction) >= 2 and prediction[0].isupper() and prediction[1] == ".":
        return prediction[0].lower() == target
    return False


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ScienceQAAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("int32"),
                    "num_choices": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://github.com/haotian-liu/LLaVA", "https://github.com/EvolvingLMMs-Lab/lmms-eval"],
        )

    def _compute(self, predictions, references, num_choices, protocol="llava"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown ScienceQA protocol {protocol!r}; choose one of {PROTOCOLS}.")
        if not predictions:
            raise ValueError("scienceqa_accuracy needs at least one prediction.")
        correct = 0
        for index, (prediction, answer, choices) in enumerate(zip(predictions, references, num_choices)):
            if not 0 <= answer < choices:
                raise ValueError(f"references[{index}] is {answer}, outside the {choices} choices of that question.")
            if protocol == "llava":
                correct += llava_choice(prediction, choices) == answer
            else:
                correct += lmms_eval_correct(prediction, answer)
        return {"accuracy": 100.0 * correct / len(predictions)}
