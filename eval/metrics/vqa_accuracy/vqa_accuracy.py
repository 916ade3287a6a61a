"""VQA accuracy (OK-VQA, VQAv2, VizWiz), as the official VQA evaluation tool and lmms-eval compute it."""

import re

import datasets
import evaluate


_DESCRIPTION = """\
VQA accuracy: a prediction is compared with each of the human answers in turn, leaving that answer out, and
scores min(1, matches among the others / 3); the question's score is the mean over the answers, and the
result is 100 * the mean over questions (a percentage, as the benchmarks report it).

`protocol="official"` follows GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (master),
quirks included:
- newlines and tabs become spaces and both ends are stripped;
- when all the human answers are identical, nothing else is normalised (case and punctuation then matter);
- otherwise the prediction and the answers are normalised: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !
  is deleted when it touches a space anywhere in the text, or everywhere when the text holds `digit,digit`,
  and replaced by a space otherwise; a period not followed by a digit is removed, but at most 32 of them
  (the tool passes `re.UNICODE`, i.e. 32, as the `count` argument); then lowercase, number words
  none/zero..ten become digits, the articles a/an/the are dropped, and a fixed contractions table is applied
  word by word. Its capitalised keys (`Im`, `Ive`, `Id've`, `I'dve`) never match the lowercased words.

`protocol="lmms-eval"` follows lmms-eval's OK-VQA task (`EvalAIAnswerProcessor`): the prediction is stripped
(lmms-eval's runner does it), then the prediction and every answer are always normalised: lowercase, `,` and
`?` deleted, `'s` split into ` 's`, then the same punctuation, period, number, article and contraction steps
(the `digit,digit` rule can no longer fire, the commas being gone).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[list[str]]`): the human answers of each question (10 for OK-VQA and VQAv2).
    protocol (`str`, defaults to `"official"`): `"official"` or `"lmms-eval"`.
Returns:
    `{"vqa_accuracy": float}`, between 0 and 100.
Example:
    >>> import evaluate
    >>> vqa = evaluate.load("eval/metrics/vqa_accuracy")
    >>> vqa.compute(predictions=["Two"], references=[["2"] * 7 + ["3"] * 3])["vqa_accuracy"]
    100.0
"""

_CITATION = """\
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and
          Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
"""

PROTOCOLS = ("official", "lmms-eval")

# The official tool's table, as data (ASCII apostrophes, capitalised keys and the reversed "somebody'd" kept).
CONTRACTIONS = dict(
    pair.split("=")
    for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
    couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
    hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
    howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
    it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
    oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
    somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
    someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
    somethingd=something'd somethingd've=something'd've something'dve=something'd've
    somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
    therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
    werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
    wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
    whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
    wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
    yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
    you'dve=you'd've youll=you'll youre=you're youve=you've
    """.split()
)
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its "(?!<=\d)" is a look-ahead that always holds before a ".".
PERIOD = re.compile(r"\.(?!\d)")
MAX_PERIODS_REMOVED = re.UNICODE  # 32: the official tool passes this flag as `count`


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: the touching-a-space and `digit,digit` tests read the input text."""
    delete_everywhere = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_everywhere or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out, count=MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lowercase, number words to digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_official(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def normalize_lmms_eval(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, answers: list[str], protocol: str = "official") -> float:
    """Accuracy of one prediction against its human answers, in [0, 1]."""
    if protocol == "official":
        prediction = _clean_whitespace(prediction)
        answers = [_clean_whitespace(answer) for answer in answers]
        if len(set(answers)) > 1:
            prediction = normalize_official(prediction)
            answers = [normalize_official(answer) for answer in answers]
    elif protocol == "lmms-eval":
        prediction = normalize_lmms_eval(prediction.strip())
        answers = [normalize_lmms_eval(answer) for answer in answers]
    else:
        raise ValueError(f"Unknown VQA protocol {protocol!r}; choose one of {PROTOCOLS}.")
    matches = sum(answer == prediction for answer in answers)
    # Leaving out answer i: the others match `matches - (answers[i] == prediction)` times.
    scores = [min(1.0, (matches - (answer == prediction)) / 3) for answer in answers]
    return sum(scores) / len(scores)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VQAAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA", "https://github.com/EvolvingLMMs-Lab/lmms-eval"],
        )

    def _compute(self, predictions, references, protocol="official"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown VQA protocol {protocol!r}; choose one of {PROTOCOLS}.")
        if not predictions:
            raise ValueError("vqa_accuracy needs at least one prediction.")
        for index, answers in enumerate(references):
            if not answers:
                raise ValueError(f"references[{index}] is empty: each question needs its human answers.")
        total = sum(question_accuracy(p, list(a), protocol) for p, a in zip(predictions, references))
        return {"vqa_accuracy": 100.0 * total / len(predictions)}
