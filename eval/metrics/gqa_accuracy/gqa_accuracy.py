"""GQA accuracy (exact match), as GQA's official `eval.py`, LLaVA and lmms-eval compute it."""

import string

import datasets
import evaluate


_DESCRIPTION = """\
GQA accuracy: 100 * share of questions whose answer equals the reference, after the protocol's processing.

- `protocol="official"`: GQA's `eval.py` (testdev-balanced): exact string match, nothing normalised.
- `protocol="llava"`: LLaVA's `scripts/convert_gqa_for_eval.py` turns each prediction into
  `prediction.rstrip('.').lower()` before the official script; the references stay as they are.
- `protocol="lmms-eval"`: lmms-eval strips the prediction (its runner does), then its `exact_match` with
  `ignore_case` and `ignore_punctuation` lowercases both sides and deletes every `string.punctuation`
  character from both.

Filtering to balanced questions (`isBalanced`) is the caller's job; the testdev-balanced files hold only them.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): the GQA answers.
    protocol (`str`, defaults to `"official"`): `"official"`, `"llava"` or `"lmms-eval"`.
Returns:
    `{"accuracy": float}`, between 0 and 100.
Example:
    >>> import evaluate
    >>> gqa = evaluate.load("eval/metrics/gqa_accuracy")
    >>> gqa.compute(predictions=["Left."], references=["left"], protocol="llava")["accuracy"]
    100.0
"""

_CITATION = """\
@inproceedings{hudson2019gqa,
  title={{GQA}: A New Dataset for Real-World Visual Reasoning and Compositional Question Answering},
  author={Hudson, Drew A. and Manning, Christopher D.},
  booktitle={CVPR},
  year={2019}
}
"""

PROTOCOLS = ("official", "llava", "lmms-eval")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def is_correct(prediction: str, reference: str, protocol: str = "official") -> bool:
    if protocol == "official":
        return prediction == reference
    if protocol == "llava":
        return prediction.rstrip(".").lower() == reference
    if protocol == "lmms-eval":
        return prediction.strip().lower().translate(_DELETE_PUNCTUATION) == reference.lower().translate(
            _DELETE_PUNCTUATION
        )
    raise ValueError(f"Unknown GQA protocol {protocol!r}; choose one of {PROTOCOLS}.")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GQAAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://cs.stanford.edu/people/dorarad/gqa/evaluate.html"],
        )

    def _compute(self, predictions, references, protocol="official"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown GQA protocol {protocol!r}; choose one of {PROTOCOLS}.")
        if not predictions:
            raise ValueError("gqa_accuracy needs at least one prediction.")
        correct = sum(is_correct(p, r, protocol) for p, r in zip(predictions, references))
        return {"accuracy": 100.0 * correct / len(predictions)}
