"""hive-shapes scenes rewritten in the layouts of the published benchmarks and of the three training stages.

Every view takes a hive-shapes `Dataset` (or a `DatasetDict`, converted split by split) and only reshapes what
the scenes already hold, so the same seed always gives the same views. Images are copied as encoded bytes,
never decoded.

Evaluation layouts (see ../shared/EVAL_PROTOCOLS.md), one row per:
    `to_mme`            question (2 per image, "Yes" and "No"): question_id, image, question, answer, category
    `to_scienceqa`      scene: image, question, choices, answer (int8 index), hint, task, grade, subject, topic,
                        category, skill, lecture, solution; `topic` is the level, `category` the question type
    `to_okvqa`          question: question_id, image, question, answers (10 str), question_type, answer_type
    `to_classification` scene: image, label (`ClassLabel`) for a linear probe
    `to_vqa`            question: image, scene_id, question, answer, choices, level, type (hive-shapes itself)
Training layouts (`hive_vlm.data.schema`):
    `to_caption_pairs`  image, text (stage 2)
    `to_conversations`  image, messages (stage 3)
"""

import datasets

from .prompts import SHORT_ANSWER_PROMPT
from .schema import chat_features, text_message
from .shapes import COLORS, LEVELS, SHAPES, TEXTURES, HiveShapesConfig

CLASSIFICATION_TARGETS = ("shape", "color", "texture", "count")

_SKILLS = {
    "color": "Identify the color of an object",
    "texture": "Identify the texture of an object",
    "shape": "Identify the shape of an object",
    "size": "Compare the size of an object with the others",
    "count": "Count objects with a given attribute",
    "position": "Locate one object relative to another",
    "comparison": "Compare sizes or numbers of objects",
}
_LECTURES = {
    "color": f"Every object has one of these colors: {', '.join(COLORS)}.",
    "texture": f"Every object is {', '.join(TEXTURES[:-1])} or {TEXTURES[-1]}; the pattern repeats every few pixels.",
    "shape": f"Every object is a {', a '.join(SHAPES[:-1])} or a {SHAPES[-1]}.",
    "size": "Each scene has exactly one large object; all the others are small.",
    "count": "Count only the objects that have the named attribute.",
    "position": "Objects sit in a 3x3 grid; left, right, above and below compare their grid cells.",
    "comparison": "An object is larger than another when it is large and the other is small.",
}
_ANSWER_TYPES = {"count": "number", "comparison": "yes/no"}


def _apply(dataset, convert):
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({split: convert(part) for split, part in dataset.items()})
    return convert(dataset)


def _expand(dataset: datasets.Dataset, rows_of_scene, features: datasets.Features) -> datasets.Dataset:
    """One output row per item of `rows_of_scene(scene) -> list[dict]`; the image bytes are copied undecoded."""
    raw = dataset.cast_column("image", datasets.Image(decode=False))

    def expand(batch):
        out = {name: [] for name in features}
        for i in range(len(batch["scene_id"])):
            scene = {name: batch[name][i] for name in batch}
            for row in rows_of_scene(scene):
                for name in features:
                    out[name].append(scene["image"] if name == "image" else row[name])
        return out

    return raw.map(expand, batched=True, batch_size=256, remove_columns=raw.column_names, features=features,
                   desc="hive-shapes view")


def _scene_index(scene: dict) -> int:
    return int(scene["scene_id"].rsplit("/", 1)[1])


def to_mme(dataset):
    """MME layout: each scene's yes/no pair; both rows share `question_id` (the image's name).

    Example:
        >>> from hive_vlm.data.shapes import generate_shapes
        >>> from hive_vlm.data.shapes_layouts import to_mme
        >>> mme = to_mme(generate_shapes(num_train=0, num_validation=0, num_test=4, num_test_compositional=0)["test"])
        >>> mme.column_names
        ['question_id', 'image', 'question', 'answer', 'category']
    """
    string = datasets.Value("string")
    features = datasets.Features({"question_id": string, "image": datasets.Image(), "question": string,
                                  "answer": string, "category": string})

    def rows(scene):
        return [{"question_id": f"{scene['scene_id']}.png", **pair} for pair in scene["yes_no"]]

    return _apply(dataset, lambda part: _expand(part, rows, features))


def to_scienceqa(dataset):
    """ScienceQA-IMG layout: one multiple-choice question per scene, levels taken in turn (low, mid, high).

    `answer` is the index of the right option in `choices`; `topic` holds the level and `category` the type.
    """
    string = datasets.Value("string")
    features = datasets.Features({
        "image": datasets.Image(), "question": string, "choices": datasets.List(string),
        "answer": datasets.Value("int8"), "hint": string, "task": string, "grade": string, "subject": string,
        "topic": string, "category": string, "skill": string, "lecture": string, "solution": string,
    })

    def rows(scene):
        level = LEVELS[_scene_index(scene) % len(LEVELS)]
        candidates = [q for q in scene["questions"] if q["level"] == level] or scene["questions"]
        item = candidates[0]
        return [{
            "question": item["question"], "choices": item["choices"], "answer": item["choices"].index(item["answer"]),
            "hint": "", "task": "yes or no" if item["type"] == "comparison" else "closed choice", "grade": "",
            "subject": "hive-shapes", "topic": item["level"], "category": item["type"], "skill": _SKILLS[item["type"]],
            "lecture": _LECTURES[item["type"]], "solution": f"The answer is {item['answer']}.",
        }]

    return _apply(dataset, lambda part: _expand(part, rows, features))


def to_okvqa(dataset):
    """OK-VQA layout: every question of every scene, its answer repeated as the 10 reference answers.

    `question_id` is a numeric string unique within a split; `question_type` is the hive-shapes type and
    `answer_type` is VQA's (`number`, `yes/no` or `other`).
    """
    string = datasets.Value("string")
    features = datasets.Features({"question_id": string, "image": datasets.Image(), "question": string,
                                  "answers": datasets.List(string), "question_type": string, "answer_type": string})

    def rows(scene):
        base = _scene_index(scene) * 100
        return [{"question_id": str(base + j), "question": q["question"], "answers": [q["answer"]] * 10,
                 "question_type": q["type"], "answer_type": _ANSWER_TYPES.get(q["type"], "other")}
                for j, q in enumerate(scene["questions"])]

    return _apply(dataset, lambda part: _expand(part, rows, features))


def to_vqa(dataset):
    """hive-shapes' own evaluation layout: one row per question with its level, type and choices."""
    string = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "scene_id": string, "question": string,
                                  "answer": string, "choices": datasets.List(string), "level": string, "type": string})

    def rows(scene):
        return [{"scene_id": scene["scene_id"], **q} for q in scene["questions"]]

    return _apply(dataset, lambda part: _expand(part, rows, features))


def to_classification(dataset, target: str = "shape", max_objects: int = HiveShapesConfig.max_objects):
    """Image-level labels for a linear probe: an attribute of each scene's main (large) object, or the count.

    Args:
        dataset: hive-shapes `Dataset` or `DatasetDict`.
        target: `shape` and `texture` (mid- and low-level), `color` (low-level) or `count` (high-level, labels
            "1".."max_objects").
        max_objects: the generator's `max_objects`, which fixes the `count` label names.

    Example:
        >>> from hive_vlm.data.shapes import generate_shapes
        >>> from hive_vlm.data.shapes_layouts import to_classification
        >>> probe = to_classification(generate_shapes(num_train=4, num_validation=0, num_test=0,
        ...                                           num_test_compositional=0)["train"])
        >>> probe.features["label"].names
        ['circle', 'square', 'triangle', 'diamond', 'cross']
    """
    names = {"shape": list(SHAPES), "color": list(COLORS), "texture": list(TEXTURES),
             "count": [str(n) for n in range(1, max_objects + 1)]}
    if target not in names:
        raise ValueError(f"unknown classification target {target!r}; expected one of {CLASSIFICATION_TARGETS}.")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names[target])})

    def rows(scene):
        value = str(len(scene["objects"])) if target == "count" else scene["objects"][0][target]
        if value not in names[target]:
            raise ValueError(f"scene {scene['scene_id']} has {value} objects, more than max_objects={max_objects}.")
        return [{"label": names[target].index(value)}]

    return _apply(dataset, lambda part: _expand(part, rows, features))


def to_caption_pairs(dataset):
    """Stage-2 image-text pairs: `image` and `text` (the scene's caption)."""
    return _apply(dataset, lambda part: part.select_columns(["image", "caption"]).rename_column("caption", "text"))


def to_conversations(dataset, prompt_suffix: str = SHORT_ANSWER_PROMPT):
    """Stage-3 conversations: every question of a scene as one multi-turn chat, the image in the first turn.

    Args:
        dataset: hive-shapes `Dataset` or `DatasetDict`.
        prompt_suffix: appended to every question; by default the short-answer instruction the MME, GQA and
            OK-VQA prompts end with.
    """

    def rows(scene):
        messages = []
        for i, q in enumerate(scene["questions"]):
            messages.append(text_message("user", q["question"] + prompt_suffix, with_image=i == 0))
            messages.append(text_message("assistant", q["answer"]))
        return [{"messages": messages}]

    return _apply(dataset, lambda part: _expand(part, rows, chat_features()))
