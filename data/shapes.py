"""hive-shapes: a deterministic synthetic benchmark whose questions need low-, mid- or high-level vision.

Every scene is a few textured shapes on a noisy background. The first object of a scene (its *main* object) is
the only large one; the others are small. Objects sit in distinct cells of a 3x3 grid, so spatial relations are
never ambiguous. Each scene carries a caption (stage 2), question-answer pairs tagged with the level of visual
feature they need (stage 3 and evaluation), and one yes/no pair in MME's style.

Levels:
    low:  color, texture (solid, striped, dotted, checkered; periods of a few pixels)
    mid:  shape, size
    high: count, position (left/right, above/below), comparison (larger than, more than)

Every scene is generated from its own `numpy.random.Generator` seeded with `(seed, split, index)`, so any scene
can be regenerated alone with `generate_scene`, and a dataset is identical byte for byte for a given seed.
The `test_compositional` split holds (shape, color) pairs that no other split ever shows (`HELD_OUT_PAIRS`).
"""

import io
import itertools
from dataclasses import dataclass, field

import datasets
import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
                 "cross": "crosses"}
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 140, 30),
}
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted", "checkered")
LEVELS = ("low", "mid", "high")
QUESTION_TYPES = {
    "low": ("color", "texture"),
    "mid": ("shape", "size"),
    "high": ("count", "position", "comparison"),
}
# (shape, color) pairs seen only in the `test_compositional` split.
HELD_OUT_PAIRS = (("circle", "green"), ("square", "purple"), ("triangle", "orange"), ("diamond", "blue"),
                  ("cross", "red"))
SPLITS = ("train", "validation", "test", "test_compositional")
MME_CATEGORIES = ("existence", "count", "position", "color")

_SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}
_CELL_NAMES = (("in the top left", "at the top", "in the top right"),
               ("on the left", "in the center", "on the right"),
               ("in the bottom left", "at the bottom", "in the bottom right"))
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ATTRIBUTES = ("size", "color", "texture", "shape")
# Subsets of attributes a referring expression may use, shortest first.
_REFERENCE_SUBSETS = [subset for n in range(len(_ATTRIBUTES) + 1) for subset in itertools.combinations(_ATTRIBUTES, n)]
_SIZE_RADIUS = {"small": 0.085, "large": 0.145}  # radius as a fraction of the image side
_SHADE = 0.35  # texture pattern colour = object colour * _SHADE


@dataclass
class HiveShapesConfig:
    """Settings of the hive-shapes generator.

    Args:
        image_size: side of the square RGB images, in pixels. At least 24.
        min_objects: fewest objects in a scene (the main object included).
        max_objects: most objects in a scene; at most 9 (one per grid cell).
        questions_per_level: question-answer pairs per level and scene.
        noise_std: standard deviation of the background's per-pixel Gaussian noise (0-255 scale).
        object_noise_std: standard deviation of the noise added over the whole image after drawing.
        num_choices: options per multiple-choice question (fewer when the answer vocabulary is smaller).

    Example:
        >>> from hive_vlm.data.shapes import HiveShapesConfig, generate_scene
        >>> generate_scene(seed=0, config=HiveShapesConfig(image_size=32)).image.size
        (32, 32)
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    questions_per_level: int = 2
    noise_std: float = 24.0
    object_noise_std: float = 6.0
    num_choices: int = 4

    def __post_init__(self):
        if self.image_size < 24:
            raise ValueError(f"image_size must be at least 24 pixels for the textures to show, got {self.image_size}.")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 9, got min_objects={self.min_objects}, "
                f"max_objects={self.max_objects}."
            )
        if self.questions_per_level < 1:
            raise ValueError(f"questions_per_level must be at least 1, got {self.questions_per_level}.")
        if self.num_choices < 2:
            raise ValueError(f"num_choices must be at least 2, got {self.num_choices}.")


@dataclass
class HiveShapesObject:
    """One object of a scene: its attributes and its centre (`x`, `y`, in pixels) in grid cell (`row`, `column`)."""

    shape: str
    color: str
    size: str
    texture: str
    row: int
    column: int
    x: int = 0
    y: int = 0

    def describe(self, attributes=_ATTRIBUTES) -> str:
        """Noun phrase naming the given attributes, e.g. `large red striped circle` or `dotted object`."""
        words = [getattr(self, name) for name in ("size", "color", "texture") if name in attributes]
        words.append(self.shape if "shape" in attributes else "object")
        return " ".join(words)


@dataclass
class HiveShapesScene:
    """A generated scene: the image, its objects (main object first) and all its texts.

    `questions` are dicts with `question`, `answer`, `choices` (the answer among distractors), `level` and `type`.
    `yes_no` holds one question answered "Yes" and one answered "No" (keys `question`, `answer`, `category`).
    """

    scene_id: str
    pixels: np.ndarray  # (H, W, 3) uint8
    objects: list
    caption: str
    questions: list = field(default_factory=list)
    yes_no: list = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="RGB")

    def png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def to_example(self) -> dict:
        """The row this scene becomes in the `datasets` table (see `shapes_features`)."""
        objects = [
            {"shape": o.shape, "color": o.color, "size": o.size, "texture": o.texture, "x": o.x, "y": o.y,
             "row": o.row, "column": o.column}
            for o in self.objects
        ]
        return {"image": {"bytes": self.png_bytes(), "path": None}, "scene_id": self.scene_id,
                "caption": self.caption, "objects": objects, "questions": self.questions, "yes_no": self.yes_no}


def shapes_features() -> datasets.Features:
    """The `datasets.Features` of a hive-shapes split (one row per scene)."""
    string = datasets.Value("string")
    int32 = datasets.Value("int32")
    return datasets.Features({
        "image": datasets.Image(),
        "scene_id": string,
        "caption": string,
        "objects": datasets.List({"shape": string, "color": string, "size": string, "texture": string, "x": int32,
                                  "y": int32, "row": int32, "column": int32}),
        "questions": datasets.List({"question": string, "answer": string, "choices": datasets.List(string),
                                    "level": string, "type": string}),
        "yes_no": datasets.List({"question": string, "answer": string, "category": string}),
    })


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of scene `index` of `split`: independent of every other scene."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def generate_scene(seed: int = 0, split: str = "train", index: int = 0, config: HiveShapesConfig | None = None
                   ) -> HiveShapesScene:
    """Generate one scene, with its caption and questions, exactly as it appears in `generate_shapes`.

    Args:
        seed: dataset seed.
        split: one of `SPLITS`; `test_compositional` scenes contain a held-out (shape, color) pair.
        index: position of the scene in its split.
        config: generator settings; `HiveShapesConfig()` by default.

    Example:
        >>> from hive_vlm.data.shapes import generate_scene
        >>> scene = generate_scene(seed=0, split="test", index=3)
        >>> question = scene.questions[0]
        >>> (question["level"], question["question"], question["answer"])  # doctest: +SKIP
        ('low', 'What color is the square?', 'blue')
    """
    config = config or HiveShapesConfig()
    rng = scene_rng(seed, split, index)
    objects = _sample_objects(rng, config, compositional=split == "test_compositional")
    pixels = _render(rng, objects, config)
    focus = next((i for i, o in enumerate(objects) if (o.shape, o.color) in HELD_OUT_PAIRS), None)
    questions = _sample_questions(rng, objects, config, focus)
    yes_no = _sample_yes_no(rng, objects, config)
    return HiveShapesScene(scene_id=f"{split}/{index:06d}", pixels=pixels, objects=objects,
                           caption=_caption(objects), questions=questions, yes_no=yes_no)


def generate_split(split: str, num_scenes: int, seed: int = 0, config: HiveShapesConfig | None = None
                   ) -> datasets.Dataset:
    """Generate `num_scenes` scenes of `split` as a `datasets.Dataset` with the `shapes_features` schema."""
    config = config or HiveShapesConfig()
    columns = {name: [] for name in shapes_features()}
    for index in range(num_scenes):
        for name, value in generate_scene(seed, split, index, config).to_example().items():
            columns[name].append(value)
    info = datasets.DatasetInfo(description=f"hive-shapes {split}, seed {seed}", features=shapes_features())
    return datasets.Dataset.from_dict(columns, features=shapes_features(), info=info)


def generate_shapes(seed: int = 0, num_train: int = 20_000, num_validation: int = 1_000, num_test: int = 1_000,
                    num_test_compositional: int = 1_000, config: HiveShapesConfig | None = None
                    ) -> datasets.DatasetDict:
    """Generate the hive-shapes benchmark: splits train, validation, test and test_compositional.

    Args:
        seed: dataset seed; the same seed gives the same bytes.
        num_train, num_validation, num_test, num_test_compositional: scenes per split.
        config: generator settings; `HiveShapesConfig()` by default (64x64 images).

    Returns:
        A `datasets.DatasetDict`. Each row is one scene: `image` (an `Image` feature), `scene_id`, `caption`,
        `objects`, `questions` (with `level` and `type`) and `yes_no`. Views in the published evaluation
        layouts are in `hive_vlm.data.shapes_layouts`.

    Example:
        >>> from hive_vlm.data.shapes import generate_shapes
        >>> shapes = generate_shapes(seed=0, num_train=8, num_validation=2, num_test=2, num_test_compositional=2)
        >>> sorted(shapes)
        ['test', 'test_compositional', 'train', 'validation']
        >>> shapes.save_to_disk("/tmp/hive-shapes")  # doctest: +SKIP
    """
    sizes = {"train": num_train, "validation": num_validation, "test": num_test,
             "test_compositional": num_test_compositional}
    for split, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"num_{split} must be a number of scenes, 0 or more; got {size!r}.")
    return datasets.DatasetDict({split: generate_split(split, sizes[split], seed, config) for split in SPLITS})


def _sample_objects(rng: np.random.Generator, config: HiveShapesConfig, compositional: bool) -> list:
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = rng.permutation(9)[:num_objects]
    novel_object = int(rng.integers(num_objects)) if compositional else -1
    objects = []
    for i, cell in enumerate(cells):
        if i == novel_object:
            shape, color = HELD_OUT_PAIRS[rng.integers(len(HELD_OUT_PAIRS))]
        else:
            shape = SHAPES[rng.integers(len(SHAPES))]
            allowed = [c for c in COLORS if (shape, c) not in HELD_OUT_PAIRS]
            color = allowed[rng.integers(len(allowed))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        objects.append(HiveShapesObject(shape, color, "large" if i == 0 else "small", texture,
                                        row=int(cell) // 3, column=int(cell) % 3))
    cell_side = config.image_size / 3
    for o in objects:
        radius = _SIZE_RADIUS[o.size] * config.image_size
        slack = max(0.0, cell_side / 2 - radius - 1)
        o.x = int(round((o.column + 0.5) * cell_side + rng.uniform(-slack, slack)))
        o.y = int(round((o.row + 0.5) * cell_side + rng.uniform(-slack, slack)))
    return objects


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":
        return (dy >= -r) & (dy <= 0.75 * r) & (np.abs(dx) <= 0.6 * (dy + r))
    if shape == "cross":
        arm = 0.35 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}.")


def _texture_mask(texture: str, xx: np.ndarray, yy: np.ndarray, half_period: int) -> np.ndarray:
    """True where the texture shows its darker shade; coordinates are absolute pixels."""
    if texture == "solid":
        return np.zeros(np.broadcast_shapes(xx.shape, yy.shape), dtype=bool)
    if texture == "striped":
        return ((xx + yy) // half_period) % 2 == 1
    if texture == "dotted":
        return ((xx % (2 * half_period)) < half_period) & ((yy % (2 * half_period)) < half_period)
    if texture == "checkered":
        return ((xx // half_period) + (yy // half_period)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}.")


def _render(rng: np.random.Generator, objects: list, config: HiveShapesConfig) -> np.ndarray:
    side = config.image_size
    half_period = max(1, side // 32)  # 2 px stripes, dots and checks at 64x64
    background = rng.uniform(70, 170)
    image = background + config.noise_std * rng.standard_normal((side, side, 3), dtype=np.float32)
    for o in objects:
        r = _SIZE_RADIUS[o.size] * side
        top, bottom = max(0, int(o.y - r) - 1), min(side, int(o.y + r) + 2)
        left, right = max(0, int(o.x - r) - 1), min(side, int(o.x + r) + 2)
        yy = np.arange(top, bottom)[:, None]
        xx = np.arange(left, right)[None, :]
        inside = _shape_mask(o.shape, xx - o.x, yy - o.y, r)
        color = np.asarray(COLORS[o.color], dtype=np.float32)
        shaded = _texture_mask(o.texture, xx, yy, half_period)
        patch = np.where(shaded[..., None], color * _SHADE, color)  # (h, w, 3)
        window = image[top:bottom, left:right]
        window[inside] = np.broadcast_to(patch, window.shape)[inside]
    image += config.object_noise_std * rng.standard_normal((side, side, 3), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _caption(objects: list) -> str:
    ordered = [objects[0]] + sorted(objects[1:], key=lambda o: (o.row, o.column))
    phrases = [f"{_article(o.describe())} {o.describe()} {_CELL_NAMES[o.row][o.column]}" for o in ordered]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _reference_table(objects: list) -> list:
    """For each object, the attribute subsets (shortest first) that describe it and no other object."""
    keys = {subset: [tuple(getattr(o, a) for a in subset) for o in objects] for subset in _REFERENCE_SUBSETS}
    return [[subset for subset in _REFERENCE_SUBSETS if keys[subset].count(keys[subset][i]) == 1]
            for i in range(len(objects))]


def _reference(objects: list, table: list, target: int, exclude: str, rng: np.random.Generator) -> str | None:
    """Shortest description that singles out `objects[target]` without naming `exclude` (None if impossible)."""
    usable = [subset for subset in table[target] if exclude not in subset]
    if not usable:
        return None
    shortest = [subset for subset in usable if len(subset) == len(usable[0])]
    return "the " + objects[target].describe(shortest[rng.integers(len(shortest))])


def _choices(rng: np.random.Generator, answer: str, vocabulary, num_choices: int) -> list:
    distractors = [v for v in vocabulary if v != answer]
    picked = [distractors[i] for i in rng.permutation(len(distractors))[: num_choices - 1]]
    options = picked + [answer]
    return [options[i] for i in rng.permutation(len(options))]


def _count_vocabulary(config: HiveShapesConfig) -> list:
    return [str(n) for n in range(config.max_objects + 1)]


def _object_questions(rng, objects, table, qtype, targets):
    """(question, answer) pairs about one object's `qtype` attribute."""
    templates = {"color": "What color is {}?", "texture": "What texture does {} have?",
                 "shape": "What shape is {}?", "size": "What size is {}?"}
    pairs = []
    for i in targets:
        reference = _reference(objects, table, i, qtype, rng)
        if reference is not None:
            pairs.append((templates[qtype].format(reference), getattr(objects[i], qtype)))
    return pairs


def _count_questions(objects):
    pairs = [("How many objects are there?", str(len(objects)))]
    for color in COLORS:
        pairs.append((f"How many {color} objects are there?", str(sum(o.color == color for o in objects))))
    for shape in SHAPES:
        pairs.append((f"How many {SHAPE_PLURALS[shape]} are there?", str(sum(o.shape == shape for o in objects))))
    for texture in TEXTURES:
        pairs.append((f"How many {texture} objects are there?", str(sum(o.texture == texture for o in objects))))
    return pairs


def _position_questions(rng, objects, table, focus):
    pairs = []
    for i, j in itertools.permutations(range(len(objects)), 2):
        if focus is not None and focus not in (i, j):
            continue
        a, b = _reference(objects, table, i, "", rng), _reference(objects, table, j, "", rng)
        if a is None or b is None:
            continue
        if objects[i].column != objects[j].column:
            side = "left" if objects[i].column < objects[j].column else "right"
            pairs.append((f"Is {a} left or right of {b}?", side))
        if objects[i].row != objects[j].row:
            side = "above" if objects[i].row < objects[j].row else "below"
            pairs.append((f"Is {a} above or below {b}?", side))
    return pairs


def _comparison_questions(rng, objects, table, focus):
    pairs = []
    for i, j in itertools.permutations(range(len(objects)), 2):
        if 0 not in (i, j) or (focus is not None and focus not in (i, j)):
            continue
        a, b = _reference(objects, table, i, "", rng), _reference(objects, table, j, "", rng)
        if a is not None and b is not None:
            pairs.append((f"Is {a} larger than {b}?", "yes" if i == 0 else "no"))
    values = [(a, v) for a in ("color", "shape", "texture")
              for v in (COLORS if a == "color" else SHAPES if a == "shape" else TEXTURES)]
    counts = {(a, v): sum(getattr(o, a) == v for o in objects) for a, v in values}
    present = [key for key in values if counts[key] > 0]
    for first in present:
        for second in values:
            if first[0] == second[0] and counts[first] != counts[second]:
                pairs.append((f"Are there more {_plural_phrase(*first)} than {_plural_phrase(*second)}?",
                              "yes" if counts[first] > counts[second] else "no"))
    return pairs


def _plural_phrase(attribute: str, value: str) -> str:
    return SHAPE_PLURALS[value] if attribute == "shape" else f"{value} objects"


def _answer_vocabulary(qtype: str, answer: str, config: HiveShapesConfig) -> list:
    if qtype == "color":
        return list(COLORS)
    if qtype == "texture":
        return list(TEXTURES)
    if qtype == "shape":
        return list(SHAPES)
    if qtype == "size":
        return list(SIZES)
    if qtype == "count":
        return _count_vocabulary(config)
    if qtype == "position":
        return ["left", "right"] if answer in ("left", "right") else ["above", "below"]
    return ["yes", "no"]


def _level_candidates(rng, objects, table, level, focus):
    """{type: [(question, answer), ...]} of one level; about object `focus` only, when it is not None."""
    candidates = {}
    for qtype in QUESTION_TYPES[level]:
        if qtype in ("color", "texture", "shape", "size"):
            targets = [focus] if focus is not None else range(len(objects))
            pairs = _object_questions(rng, objects, table, qtype, targets)
        elif qtype == "count":
            pairs = _count_questions(objects)
        elif qtype == "position":
            pairs = _position_questions(rng, objects, table, focus)
        else:
            pairs = _comparison_questions(rng, objects, table, focus)
        if pairs:
            candidates[qtype] = pairs
    return candidates


def _sample_questions(rng, objects, config, focus):
    """`questions_per_level` questions per level: about the `focus` object while it allows enough of them."""
    table = _reference_table(objects)
    questions = []
    for level in LEVELS:
        pools = [_level_candidates(rng, objects, table, level, focus)]
        if focus is not None:
            pools.append(_level_candidates(rng, objects, table, level, None))
        asked = set()
        for _ in range(config.questions_per_level):
            for candidates in pools:
                types = [t for t in candidates if any(q not in asked for q, _ in candidates[t])]
                if types:
                    break
            else:
                break
            qtype = types[rng.integers(len(types))]
            remaining = [pair for pair in candidates[qtype] if pair[0] not in asked]
            question, answer = remaining[rng.integers(len(remaining))]
            asked.add(question)
            vocabulary = _answer_vocabulary(qtype, answer, config)
            questions.append({"question": question, "answer": answer, "level": level, "type": qtype,
                              "choices": _choices(rng, answer, vocabulary, config.num_choices)})
    return questions


def _yes_no_pair(rng, objects, table, category, config):
    """(yes question, no question) of one MME category, or None when the scene cannot ask it."""
    suffix = " Please answer yes or no."
    if category == "existence":
        present = sorted({o.shape for o in objects}, key=SHAPES.index)
        absent = [s for s in SHAPES if s not in present]
        if not absent:
            return None
        yes, no = present[rng.integers(len(present))], absent[rng.integers(len(absent))]
        return (f"Is there {_article(yes)} {yes} in this image?{suffix}",
                f"Is there {_article(no)} {no} in this image?{suffix}")
    if category == "count":
        n = len(objects)
        wrong = [m for m in range(1, config.max_objects + 2) if m != n]
        m = wrong[rng.integers(len(wrong))]

        def ask(k):
            return (f"Is there exactly one object in this image?{suffix}" if k == 1
                    else f"Are there exactly {_NUMBER_WORDS[k]} objects in this image?{suffix}")

        return ask(n), ask(m)
    if category == "position":
        pairs = []
        for i, j in itertools.permutations(range(len(objects)), 2):
            a, b = _reference(objects, table, i, "", rng), _reference(objects, table, j, "", rng)
            if a is None or b is None:
                continue
            if objects[i].column < objects[j].column:
                pairs.append((f"Is {a} to the left of {b}?{suffix}", f"Is {b} to the left of {a}?{suffix}"))
            if objects[i].row < objects[j].row:
                pairs.append((f"Is {a} above {b}?{suffix}", f"Is {b} above {a}?{suffix}"))
        return pairs[rng.integers(len(pairs))] if pairs else None
    if category == "color":
        i = int(rng.integers(len(objects)))
        reference = _reference(objects, table, i, "color", rng)
        if reference is None:
            return None
        others = [c for c in COLORS if c != objects[i].color]
        wrong = others[rng.integers(len(others))]
        return (f"Is {reference} {objects[i].color}?{suffix}", f"Is {reference} {wrong}?{suffix}")
    raise ValueError(f"unknown MME category {category!r}; expected one of {MME_CATEGORIES}.")


def _sample_yes_no(rng, objects, config):
    table = _reference_table(objects)
    for category in rng.permutation(len(MME_CATEGORIES)):
        pair = _yes_no_pair(rng, objects, table, MME_CATEGORIES[category], config)
        if pair is not None:
            name = MME_CATEGORIES[category]
            return [{"question": pair[0], "answer": "Yes", "category": name},
                    {"question": pair[1], "answer": "No", "category": name}]
    raise AssertionError("unreachable: the count category applies to every scene")
