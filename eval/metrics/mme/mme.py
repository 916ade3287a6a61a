"""MME scores (yes/no questions, two per image), as MME's official `calculation.py` and lmms-eval compute them."""

from collections import defaultdict

import datasets
import evaluate


_DESCRIPTION = """\
MME: each image has two yes/no questions. Per subtask (category), acc = 100 * share of questions answered
right, acc+ = 100 * share of images with both questions right, and score = acc + acc+ (at most 200).
Perception sums the scores of existence, count, position, color, posters, celebrity, scene, landmark,
artwork and OCR (at most 2000); cognition those of commonsense_reasoning, numerical_calculation,
text_translation and code_reasoning (at most 800). Categories absent from the inputs add nothing.

Questions are paired by `question_id` (the image path in lmms-lab/MME), not by position; every
(category, question_id) must have exactly two questions.

`protocol="official"` follows MME's `calculation.py` (BradyFU/Awesome-Multimodal-Large-Language-Models,
branch Evaluation): the answer is lowercased but NOT stripped; exactly "yes"/"no" is taken as is, otherwise
its first 4 characters decide: containing "yes" -> yes, else containing "no" -> no, else "other" (always
wrong). So "Yes, there is" -> yes, "Nothing" -> no, " no" -> no, but "  Yes" (two leading spaces) or ". yes"
-> other.

`protocol="lmms-eval"` follows lmms-eval's MME task: the answer is lowercased, stripped and its periods
deleted first; single letters "y"/"n" mean yes/no; then the same rules.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): "Yes" or "No" (any case).
    question_ids (`list[str]`): the image each question belongs to; the two questions of an image share it.
    categories (`list[str]`): the MME subtask of each question, e.g. "existence" or "code_reasoning".
    protocol (`str`, defaults to `"official"`): `"official"` or `"lmms-eval"`.
Returns:
    `{"perception": float, "cognition": float, "per_category": {category: {"acc", "acc_plus", "score"}}}`.
Example:
    >>> import evaluate
    >>> mme = evaluate.load("eval/metrics/mme")
    >>> mme.compute(predictions=["Yes", "No"], references=["Yes", "No"], question_ids=["a.jpg", "a.jpg"],
    ...             categories=["count", "count"])["perception"]
    200.0
"""

_CITATION = """\
@article{fu2023mme,
  title={{MME}: A Comprehensive Evaluation Benchmark for Multimodal Large Language Models},
  author={Fu, Chaoyou and Chen, Peixian and Shen, Yunhang and others},
  journal={arXiv preprint arXiv:2306.13394},
  year={2023}
}
"""

PROTOCOLS = ("official", "lmms-eval")
PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_answer(answer: str, protocol: str = "official") -> str:
    """Map a free-form answer to "yes", "no" or "other"."""
    if protocol == "lmms-eval":
        answer = answer.lower().strip().replace(".", "")
        if len(answer) == 1:
            return {"y": "yes", "n": "no"}.get(answer, "other")
    elif protocol == "official":
        answer = answer.lower()
    else:
        raise ValueError(f"Unknown MME protocol {protocol!r}; choose one of {PROTOCOLS}.")
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MME(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "question_ids": datasets.Value("string"),
                    "categories": datasets.Value("string"),
                }
            ),
            reference_urls=[
                "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation",
                "https://github.com/EvolvingLMMs-Lab/lmms-eval",
            ],
        )

    def _compute(self, predictions, references, question_ids, categories, protocol="official"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown MME protocol {protocol!r}; choose one of {PROTOCOLS}.")
        # category -> question_id -> [correct, ...]
        results = defaultdict(lambda: defaultdict(list))
        for index, (prediction, reference, question_id, category) in enumerate(
            zip(predictions, references, question_ids, categories)
        ):
            if category not in PERCEPTION + COGNITION:
                raise ValueError(
                    f"categories[{index}] is {category!r}, not an MME subtask; expected one of {PERCEPTION + COGNITION}."
                )
            truth = reference.lower().strip().replace(".", "") if protocol == "lmms-eval" else reference.lower()
            if truth not in ("yes", "no"):
                raise ValueError(f"references[{index}] is {reference!r}; MME references must be 'Yes' or 'No'.")
            results[category][question_id].append(parse_answer(prediction, protocol) == truth)

        per_category = {}
        for category, by_image in results.items():
            for question_id, correct in by_image.items():
                if len(correct) != 2:
                    raise ValueError(
                        f"MME scores questions in pairs: image {question_id!r} ({category}) has {len(correct)} "
                        "question(s) instead of 2. Evaluate both questions of every image."
                    )
            num_questions = sum(len(correct) for correct in by_image.values())
            acc = 100.0 * sum(sum(correct) for correct in by_image.values()) / num_questions
            acc_plus = 100.0 * sum(all(correct) for correct in by_image.values()) / len(by_image)
            per_category[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}

        return {
            "perception": sum((per_category[c]["score"] for c in PERCEPTION if c in per_category), 0.0),
            "cognition": sum((per_category[c]["score"] for c in COGNITION if c in per_category), 0.0),
            "per_category": per_category,
        }
