"""Tiny benchmark files in each benchmark's published layout, and a fake predictor, for the evaluation tests."""

import io

import datasets
import PIL.Image


COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
STRING = datasets.Value("string")
SUFFIX = "\nAnswer the question using a single word or phrase."


def png(color: str, size: int = 8) -> dict:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (size, size), COLORS[color]).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def color_of(image: PIL.Image.Image) -> str:
    pixel = image.convert("RGB").getpixel((0, 0))
    return min(COLORS, key=lambda name: sum(abs(a - b) for a, b in zip(COLORS[name], pixel)))


class FakePredictor:
    """Answers from a table keyed by (image colour, prompt); records every call. Unknown prompts fail the test."""

    def __init__(self, table: dict):
        self.table = table
        self.prompts = []
        self.batch_sizes = []

    def __call__(self, images, prompts):
        self.batch_sizes.append(len(prompts))
        self.prompts.extend(prompts)
        return [self.table[(color_of(image), prompt)] for image, prompt in zip(images, prompts)]


# ------------------------------------------------------------------------------------------------------- MME
MME_FEATURES = datasets.Features(
    {"question_id": STRING, "image": datasets.Image(), "question": STRING, "answer": STRING, "category": STRING}
)
MME_ROWS = [
    ("count/1.png", "red", "Is there one object in the image? Please answer yes or no.", "Yes", "count"),
    ("code_reasoning/2.png", "blue", "Does the code print 3? Please answer yes or no.", "Yes", "code_reasoning"),
    ("count/1.png", "red", "Are there two objects in the image? Please answer yes or no.", "No", "count"),
    ("code_reasoning/2.png", "blue", "Does the code print 4? Please answer yes or no.", "No", "code_reasoning"),
]
MME_ANSWERS = {
    ("red", "Is there one object in the image?" + SUFFIX): "Yes",  # right
    ("red", "Are there two objects in the image?" + SUFFIX): "No, there are three",  # prefix "no, ": right
    ("blue", "Does the code print 3?" + SUFFIX): "  Yes",  # official: "  ye" -> other, wrong; lmms-eval: right
    ("blue", "Does the code print 4?" + SUFFIX): "No",  # right
}


def mme_dataset() -> datasets.Dataset:
    columns = list(zip(*MME_ROWS))
    return datasets.Dataset.from_dict(
        {"question_id": columns[0], "image": [png(c) for c in columns[1]], "question": columns[2],
         "answer": columns[3], "category": columns[4]},
        features=MME_FEATURES,
    )  # fmt: skip


def write_mme(root, layout: str = "repo"):
    """lmms-lab/MME: `data/test-00000-of-00001.parquet` ("repo"), that one file ("parquet"), or save_to_disk."""
    dataset = mme_dataset()
    if layout == "save_to_disk":
        datasets.DatasetDict({"test": dataset}).save_to_disk(str(root / "mme_saved"))
        return root / "mme_saved"
    (root / "MME" / "data").mkdir(parents=True)
    dataset.to_parquet(str(root / "MME" / "data" / "test-00000-of-00001.parquet"))
    return root / "MME" / "data" / "test-00000-of-00001.parquet" if layout == "parquet" else root / "MME"


# ------------------------------------------------------------------------------------------------------- GQA
GQA_QUESTIONS = [
    # id, imageId, question, answer, isBalanced
    ("q1", "img_red", "What color is the square?", "red", True),
    ("q2", "img_green", "What color is the square?", "green", True),
    ("q3", "img_red", "Which side is the cup on?", "left", True),
    ("q4", "img_green", "Is the cup on the right?", "no", False),
    ("q5", "img_green", "What is the man wearing?", "t-shirt", True),
]
GQA_ANSWERS = {
    ("red", "What color is the square?" + SUFFIX): "Red",
    ("green", "What color is the square?" + SUFFIX): "green",
    ("red", "Which side is the cup on?" + SUFFIX): "left.",
    ("green", "Is the cup on the right?" + SUFFIX): "no",
    ("green", "What is the man wearing?" + SUFFIX): "tshirt",
}


def write_gqa(root):
    """lmms-lab/GQA: one folder per configuration, each with `testdev-00000-of-00001.parquet`."""
    ids, image_ids, questions, answers, balanced = (list(column) for column in zip(*GQA_QUESTIONS))
    instructions = datasets.Dataset.from_dict(
        {"id": ids, "imageId": image_ids, "question": questions, "answer": answers,
         "fullAnswer": [f"The answer is {a}." for a in answers], "isBalanced": balanced},
    )  # fmt: skip
    images = datasets.Dataset.from_dict(
        {"id": ["img_green", "img_red"], "image": [png("green"), png("red")]},
        features=datasets.Features({"id": STRING, "image": datasets.Image()}),
    )
    for config, dataset in (("testdev_balanced_instructions", instructions), ("testdev_balanced_images", images)):
        (root / "GQA" / config).mkdir(parents=True)
        dataset.to_parquet(str(root / "GQA" / config / "testdev-00000-of-00001.parquet"))
    return root / "GQA"


# ---------------------------------------------------------------------------------------------------- OK-VQA
OKVQA_ROWS = [
    ("1", "red", "How many dogs are there?", ["two", "two", "2"] + ["3"] * 7),
    ("2", "green", "What is the man wearing?", ["1000 tshirts"] * 3 + ["many"] * 7),
    ("3", "blue", "What sport is this?", ["Tennis"] * 10),
]
OKVQA_ANSWERS = {
    ("red", "How many dogs are there?" + SUFFIX): "2",
    ("green", "What is the man wearing?" + SUFFIX): "1,000 t-shirts",
    ("blue", "What sport is this?" + SUFFIX): "tennis",
}


def write_okvqa(root):
    """lmms-lab/OK-VQA: `data/val2014-00000-of-00001.parquet`."""
    ids, colors, questions, answers = (list(column) for column in zip(*OKVQA_ROWS))
    dataset = datasets.Dataset.from_dict(
        {"question_id": ids, "image": [png(c) for c in colors], "question": questions, "answers": answers,
         "question_type": ["other"] * 3, "answer_type": ["other"] * 3},
        features=datasets.Features({"question_id": STRING, "image": datasets.Image(), "question": STRING,
                                    "answers": datasets.List(STRING), "question_type": STRING, "answer_type": STRING}),
    )  # fmt: skip
    (root / "OK-VQA" / "data").mkdir(parents=True)
    dataset.to_parquet(str(root / "OK-VQA" / "data" / "val2014-00000-of-00001.parquet"))
    return root / "OK-VQA"


# ------------------------------------------------------------------------------------------------- ScienceQA
LETTER_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SQA_ROWS = [
    # image colour (None: no image), hint, question, choices, answer
    ("red", "The magnet is red.", "Which is a magnet?", ["iron bar", "copper coin"], 0),
    ("green", "", "Which animal can fly?", ["cat", "bird", "fish"], 1),
    (None, "", "Is this text only?", ["yes", "no"], 0),
    ("blue", "", "What is 2+2?", ["3", "4"], 1),
    ("red", "", "Which is hot?", ["fire", "ice"], 0),
]
SQA_ANSWERS = {
    ("red", "Context: The magnet is red.\nWhich is a magnet?\nA. iron bar\nB. copper coin" + LETTER_PROMPT): "A",
    ("green", "Which animal can fly?\nA. cat\nB. bird\nC. fish" + LETTER_PROMPT): "The answer is B.",
    ("blue", "What is 2+2?\nA. 3\nB. 4" + LETTER_PROMPT): "b",
    ("red", "Which is hot?\nA. fire\nB. ice" + LETTER_PROMPT): " A",
}


def write_scienceqa(root):
    """lmms-lab/ScienceQA: `ScienceQA-IMG/test-00000-of-00001.parquet`, next to a `ScienceQA-FULL` configuration."""
    colors, hints, questions, choices, answers = (list(column) for column in zip(*SQA_ROWS))
    features = datasets.Features({
        "image": datasets.Image(), "question": STRING, "choices": datasets.List(STRING),
        "answer": datasets.Value("int8"), "hint": STRING, "task": STRING, "grade": STRING, "subject": STRING,
        "topic": STRING, "category": STRING, "skill": STRING, "lecture": STRING, "solution": STRING,
    })  # fmt: skip
    blank = [""] * len(colors)
    for config, keep in (("ScienceQA-IMG", len(colors)), ("ScienceQA-FULL", 1)):
        dataset = datasets.Dataset.from_dict(
            {"image": [png(c) if c else None for c in colors][:keep], "question": questions[:keep],
             "choices": choices[:keep], "answer": answers[:keep], "hint": hints[:keep],
             **{k: blank[:keep] for k in ("task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")}},
            features=features,
        )  # fmt: skip
        (root / "ScienceQA" / config).mkdir(parents=True)
        dataset.to_parquet(str(root / "ScienceQA" / config / "test-00000-of-00001.parquet"))
    return root / "ScienceQA"


# ----------------------------------------------------------------------------------------------- hive-shapes
# The schema the hive-shapes adapter expects, one row per question: id, image, question, answer, level.
SHAPES_SCENES = [
    ("scene-0", "red", [
        ("What colour is the circle?", "red", "low"),
        ("What shape is the red object?", "circle", "mid"),
        ("How many objects are there?", "3", "high"),
    ]),
    ("scene-1", "blue", [
        ("What texture is the square?", "striped", "low"),
        ("Is the circle large or small?", "large", "mid"),
        ("Is the circle left of the square?", "yes", "high"),
    ]),
]  # fmt: skip
SHAPES_ANSWERS = {
    ("red", "What colour is the circle?" + SUFFIX): "Red.",  # right
    ("red", "What shape is the red object?" + SUFFIX): "a circle",  # right (article dropped)
    ("red", "How many objects are there?" + SUFFIX): "three",  # right (number word)
    ("blue", "What texture is the square?" + SUFFIX): "dotted",  # wrong
    ("blue", "Is the circle large or small?" + SUFFIX): "large",  # right
    ("blue", "Is the circle left of the square?" + SUFFIX): "no",  # wrong
}


def write_shapes(root, layout: str = "questions"):
    """A `save_to_disk` DatasetDict: one row per question ("questions") or per scene ("scenes")."""
    if layout == "questions":
        rows = [(f"{scene}/{rank}", color, *qa) for scene, color, qas in SHAPES_SCENES for rank, qa in enumerate(qas)]
        ids, colors, questions, answers, levels = (list(column) for column in zip(*rows))
        test = datasets.Dataset.from_dict(
            {"id": ids, "image": [png(c) for c in colors], "question": questions, "answer": answers, "level": levels},
            features=datasets.Features({"id": STRING, "image": datasets.Image(), "question": STRING,
                                        "answer": STRING, "level": STRING}),
        )  # fmt: skip
    else:
        question = {"question": STRING, "answer": STRING, "choices": datasets.List(STRING), "level": STRING,
                    "type": STRING}  # fmt: skip
        test = datasets.Dataset.from_dict(
            {"image": [png(color) for _, color, _ in SHAPES_SCENES], "scene_id": [s for s, _, _ in SHAPES_SCENES],
             "questions": [[{"question": q, "answer": a, "choices": [a], "level": lv, "type": "t"} for q, a, lv in qas]
                           for _, _, qas in SHAPES_SCENES]},
            features=datasets.Features({"image": datasets.Image(), "scene_id": STRING,
                                        "questions": datasets.List(question)}),
        )  # fmt: skip
    folder = root / f"shapes_{layout}"
    # An empty split, as `hive data shapes` writes when asked for no validation scenes.
    datasets.DatasetDict({"train": test.select([0]), "validation": test.select([]), "test": test}).save_to_disk(
        str(folder)
    )
    return folder


# ------------------------------------------------------------------------------------------- classification
CLASS_NAMES = ["cat", "dog", "golden_retriever"]


def classification_dataset(per_class: int, seed: int = 0, image_size: int = 8) -> datasets.Dataset:
    """Class k is a noisy image of colour k; the image column is named "img", as in CIFAR-10."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, color in enumerate(("red", "green", "blue")):
        for _ in range(per_class):
            pixels = np.clip(np.array(COLORS[color]) + rng.normal(0, 12, (image_size, image_size, 3)), 0, 255)
            buffer = io.BytesIO()
            PIL.Image.fromarray(pixels.astype("uint8")).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
    return datasets.Dataset.from_dict(
        {"img": images, "label": labels},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)}),
    )


def write_classification(root, train_per_class: int = 4, test_per_class: int = 1, image_size: int = 8):
    folder = root / "classification"
    datasets.DatasetDict(
        {"train": classification_dataset(train_per_class, seed=0, image_size=image_size),
         "test": classification_dataset(test_per_class, seed=1, image_size=image_size)}
    ).save_to_disk(str(folder))  # fmt: skip
    return folder


ZERO_SHOT_ANSWERS = {
    ("red", "What type of object is in this photo?"): "It is a cat.",  # right
    ("green", "What type of object is in this photo?"): "a dog",  # right
    ("blue", "What type of object is in this photo?"): "a retriever",  # wrong: "golden retriever" is absent
}

