"""hive-shapes: determinism, splits, level tags checked against an independent reading of each scene, layouts."""

import re

import datasets
import numpy as np
import pytest

from hive_vlm.cli import main as hive_main
from hive_vlm.data.shapes import (
    COLORS,
    HELD_OUT_PAIRS,
    LEVELS,
    MME_CATEGORIES,
    QUESTION_TYPES,
    SHAPE_PLURALS,
    SHAPES,
    SIZES,
    SPLITS,
    TEXTURES,
    HiveShapesConfig,
    generate_scene,
    generate_shapes,
    shapes_features,
)
from hive_vlm.data.shapes_layouts import (
    SHORT_ANSWER_PROMPT,
    to_caption_pairs,
    to_classification,
    to_conversations,
    to_mme,
    to_okvqa,
    to_scienceqa,
    to_vqa,
)

SIZES_PER_SPLIT = {"num_train": 12, "num_validation": 4, "num_test": 6, "num_test_compositional": 5}


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(seed=3, **SIZES_PER_SPLIT)


def raw_images(dataset):
    return [value["bytes"] for value in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


# An independent reading of the questions: parse the text, resolve references against the objects, recompute.
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "texture": TEXTURES}


def resolve(objects, phrase):
    assert phrase.startswith("the "), phrase
    words = phrase[len("the "):].split()
    matches = [o for o in objects if all(w == "object" or w in (o["shape"], o["color"], o["size"], o["texture"])
                                         for w in words)]
    assert len(matches) == 1, f"{phrase!r} matches {len(matches)} objects"
    return matches[0]


def count_phrase(objects, phrase):
    for shape, plural in SHAPE_PLURALS.items():
        if phrase == plural:
            return sum(o["shape"] == shape for o in objects)
    value = phrase.removesuffix(" objects")
    attribute = next(a for a, values in ATTRIBUTE_VALUES.items() if value in values)
    return sum(o[attribute] == value for o in objects)


def true_answer(objects, question):
    patterns = [
        (r"What (color|shape|size) is (the .+)\?", lambda m: resolve(objects, m[2])[m[1]]),
        (r"What texture does (the .+) have\?", lambda m: resolve(objects, m[1])["texture"]),
        (r"How many objects are there\?", lambda m: str(len(objects))),
        (r"How many (.+) are there\?", lambda m: str(count_phrase(objects, m[1]))),
        (r"Is (the .+) left or right of (the .+)\?",
         lambda m: "left" if resolve(objects, m[1])["column"] < resolve(objects, m[2])["column"] else "right"),
        (r"Is (the .+) above or below (the .+)\?",
         lambda m: "above" if resolve(objects, m[1])["row"] < resolve(objects, m[2])["row"] else "below"),
        (r"Is (the .+) larger than (the .+)\?",
         lambda m: "yes" if (resolve(objects, m[1])["size"], resolve(objects, m[2])["size"]) == ("large", "small")
         else "no"),
        (r"Are there more (.+) than (.+)\?",
         lambda m: "yes" if count_phrase(objects, m[1]) > count_phrase(objects, m[2]) else "no"),
    ]
    for pattern, answer in patterns:
        match = re.fullmatch(pattern, question)
        if match:
            return answer(match)
    raise AssertionError(f"unparsed question {question!r}")


def true_yes_no(objects, question):
    question = question.removesuffix(" Please answer yes or no.")
    number_words = ["zero", "one", "two", "three", "four", "five", "six"]
    patterns = [
        (r"Is there an? (\w+) in this image\?", lambda m: any(o["shape"] == m[1] for o in objects)),
        (r"Is there exactly one object in this image\?", lambda m: len(objects) == 1),
        (r"Are there exactly (\w+) objects in this image\?", lambda m: len(objects) == number_words.index(m[1])),
        (r"Is (the .+) to the left of (the .+)\?",
         lambda m: resolve(objects, m[1])["column"] < resolve(objects, m[2])["column"]),
        (r"Is (the .+) above (the .+)\?", lambda m: resolve(objects, m[1])["row"] < resolve(objects, m[2])["row"]),
        (r"Is (the .+) (\w+)\?", lambda m: resolve(objects, m[1])["color"] == m[2]),
    ]
    for pattern, answer in patterns:
        match = re.fullmatch(pattern, question)
        if match:
            return "Yes" if answer(match) else "No"
    raise AssertionError(f"unparsed yes/no question {question!r}")


def test_same_seed_same_bytes_and_different_seed_different_bytes(shapes):
    again = generate_shapes(seed=3, **SIZES_PER_SPLIT)
    other = generate_shapes(seed=4, **SIZES_PER_SPLIT)
    for split in SPLITS:
        assert shapes[split].data.table.equals(again[split].data.table)
        assert raw_images(shapes[split]) != raw_images(other[split])
        assert shapes[split]["questions"] != other[split]["questions"]


def test_a_scene_regenerates_alone_with_its_truth(shapes):
    scene = generate_scene(seed=3, split="test", index=4)
    row = shapes["test"][4]
    assert scene.png_bytes() == raw_images(shapes["test"])[4]
    assert scene.scene_id == row["scene_id"] == "test/000004"
    assert (scene.caption, scene.questions, scene.yes_no) == (row["caption"], row["questions"], row["yes_no"])
    assert np.array_equal(np.asarray(row["image"]), scene.pixels)


def test_every_split_has_the_requested_scenes_and_schema(shapes):
    assert sorted(shapes) == sorted(SPLITS)
    for split, size in zip(SPLITS, SIZES_PER_SPLIT.values()):
        assert len(shapes[split]) == size
        assert shapes[split].features == shapes_features()
        assert isinstance(shapes[split].features["image"], datasets.Image)
        assert shapes[split][0]["image"].size == (64, 64) and shapes[split][0]["image"].mode == "RGB"


def test_compositional_pairs_never_occur_outside_test_compositional():
    config = HiveShapesConfig()
    for split in ("train", "validation", "test"):
        for index in range(150):
            pairs = {(o.shape, o.color) for o in generate_scene(0, split, index, config).objects}
            assert not pairs & set(HELD_OUT_PAIRS), (split, index)
    seen, about_novel, about_others = set(), 0, 0
    for index in range(60):
        scene = generate_scene(0, "test_compositional", index, config)
        novel = {(o.shape, o.color) for o in scene.objects} & set(HELD_OUT_PAIRS)
        assert len(novel) == 1, index
        seen |= novel
        objects = [vars(o) for o in scene.objects]
        novel_object = next(o for o in objects if (o["shape"], o["color"]) in novel)
        for q in scene.questions:
            if q["type"] in ("color", "texture", "shape", "size"):
                subject = resolve(objects, re.search(r"(the [^?]+?)( have)?\?$", q["question"])[1])
                about_novel += subject == novel_object
                about_others += subject != novel_object
    assert seen == set(HELD_OUT_PAIRS)
    assert about_novel >= 0.9 * (about_novel + about_others)


def test_questions_carry_levels_and_correct_single_word_answers():
    config = HiveShapesConfig(questions_per_level=2)
    types_seen = {level: set() for level in LEVELS}
    answers_seen = set()
    for split in SPLITS:
        for index in range(50):
            scene = generate_scene(1, split, index, config)
            objects = [vars(o) for o in scene.objects]
            levels = [q["level"] for q in scene.questions]
            assert all(levels.count(level) == 2 for level in LEVELS), levels
            assert len({q["question"] for q in scene.questions}) == len(scene.questions)
            for q in scene.questions:
                assert q["type"] in QUESTION_TYPES[q["level"]]
                assert re.fullmatch(r"[a-z0-9]+", q["answer"]), q["answer"]
                assert q["answer"] == true_answer(objects, q["question"]), q["question"]
                assert q["answer"] in q["choices"] and len(set(q["choices"])) == len(q["choices"]) >= 2
                types_seen[q["level"]].add(q["type"])
                answers_seen.add(q["answer"])
    assert types_seen == {level: set(types) for level, types in QUESTION_TYPES.items()}
    assert {"yes", "no", "left", "right", "above", "below", "0", "4"} <= answers_seen
    assert set(COLORS) | set(TEXTURES) | set(SHAPES) | set(SIZES) <= answers_seen


def test_yes_no_pairs_are_true_mme_pairs():
    categories = set()
    for index in range(80):
        scene = generate_scene(2, "test", index)
        objects = [vars(o) for o in scene.objects]
        assert [pair["answer"] for pair in scene.yes_no] == ["Yes", "No"]
        assert scene.yes_no[0]["category"] == scene.yes_no[1]["category"] in MME_CATEGORIES
        for pair in scene.yes_no:
            assert pair["question"].endswith(" Please answer yes or no.")
            assert true_yes_no(objects, pair["question"]) == pair["answer"], pair
        categories.add(scene.yes_no[0]["category"])
    assert categories == set(MME_CATEGORIES)


def test_image_shows_each_object_with_its_color_and_texture():
    for index in range(20):
        scene = generate_scene(5, "train", index)
        for o in scene.objects:
            window = scene.pixels[o.y - 1:o.y + 2, o.x - 1:o.x + 2].reshape(-1, 3).astype(float)
            color = np.asarray(COLORS[o.color], dtype=float)
            near_color = np.abs(window - color).max(axis=1) < 30
            near_shade = np.abs(window - 0.35 * color).max(axis=1) < 30
            if o.texture == "solid":
                assert near_color.all(), (index, o)
            else:
                assert near_color.any() and near_shade.any() and (near_color | near_shade).all(), (index, o)


def test_caption_names_every_object_and_its_place():
    scene = generate_scene(0, "train", 0)
    assert scene.caption == ("A large yellow checkered triangle in the center, a small purple striped triangle in "
                             "the top right, a small purple dotted diamond on the right and a small purple solid "
                             "cross in the bottom left.")
    for index in range(30):
        scene = generate_scene(0, "validation", index)
        for o in scene.objects:
            assert o.describe() in scene.caption


def test_image_size_and_object_count_are_configurable():
    config = HiveShapesConfig(image_size=96, min_objects=3, max_objects=6)
    scene = generate_scene(0, "train", 1, config)
    assert scene.image.size == (96, 96) and 3 <= len(scene.objects) <= 6
    assert len({(o.row, o.column) for o in scene.objects}) == len(scene.objects)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"image_size": 8}, "image_size"), ({"min_objects": 3, "max_objects": 2}, "max_objects"),
     ({"max_objects": 10}, "max_objects"), ({"questions_per_level": 0}, "questions_per_level"),
     ({"num_choices": 1}, "num_choices")],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HiveShapesConfig(**kwargs)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_scene(0, "dev", 0)


def test_save_to_disk_and_parquet_round_trip(shapes, tmp_path):
    shapes.save_to_disk(tmp_path / "disk")
    loaded = datasets.load_from_disk(str(tmp_path / "disk"))
    assert loaded["test"].data.table.equals(shapes["test"].data.table)
    shapes["test"].to_parquet(str(tmp_path / "test.parquet"))
    parquet = datasets.load_dataset("parquet", data_files=str(tmp_path / "test.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert parquet.features == shapes_features()
    assert raw_images(parquet) == raw_images(shapes["test"])
    assert parquet["questions"] == shapes["test"]["questions"]


STRING = datasets.Value("string")


def test_mme_layout(shapes):
    mme = to_mme(shapes["test"])
    assert mme.features == datasets.Features({"question_id": STRING, "image": datasets.Image(), "question": STRING,
                                              "answer": STRING, "category": STRING})
    assert len(mme) == 2 * len(shapes["test"])
    for i, scene in enumerate(shapes["test"]):
        first, second = mme[2 * i], mme[2 * i + 1]
        assert first["question_id"] == second["question_id"] == f"{scene['scene_id']}.png"
        assert (first["answer"], second["answer"]) == ("Yes", "No")
        assert [first["question"], second["question"]] == [pair["question"] for pair in scene["yes_no"]]
    assert raw_images(mme)[::2] == raw_images(shapes["test"])


def test_scienceqa_layout(shapes):
    sqa = to_scienceqa(shapes["test"])
    assert sqa.features == datasets.Features({
        "image": datasets.Image(), "question": STRING, "choices": datasets.List(STRING),
        "answer": datasets.Value("int8"), "hint": STRING, "task": STRING, "grade": STRING, "subject": STRING,
        "topic": STRING, "category": STRING, "skill": STRING, "lecture": STRING, "solution": STRING,
    })
    assert len(sqa) == len(shapes["test"])
    for i, (item, scene) in enumerate(zip(sqa, shapes["test"])):
        question = next(q for q in scene["questions"] if q["question"] == item["question"])
        assert item["topic"] == question["level"] == LEVELS[i % 3]
        assert item["category"] == question["type"]
        assert item["choices"][item["answer"]] == question["answer"]


def test_okvqa_layout(shapes):
    okvqa = to_okvqa(shapes["test"])
    assert okvqa.features == datasets.Features({"question_id": STRING, "image": datasets.Image(), "question": STRING,
                                                "answers": datasets.List(STRING), "question_type": STRING,
                                                "answer_type": STRING})
    expected = [(q["question"], [q["answer"]] * 10, q["type"]) for scene in shapes["test"] for q in scene["questions"]]
    assert [(r["question"], r["answers"], r["question_type"]) for r in okvqa] == expected
    assert len(set(okvqa["question_id"])) == len(okvqa)
    types = dict(zip(okvqa["question_type"], okvqa["answer_type"]))
    assert types.get("count", "number") == "number" and types.get("color", "other") == "other"


def test_classification_layout(shapes):
    for target, names in (("shape", list(SHAPES)), ("texture", list(TEXTURES)), ("count", ["1", "2", "3", "4"])):
        probe = to_classification(shapes, target=target)
        assert sorted(probe) == sorted(SPLITS)
        assert probe["train"].features == datasets.Features({"image": datasets.Image(),
                                                             "label": datasets.ClassLabel(names=names)})
        for row, scene in zip(probe["train"], shapes["train"]):
            truth = str(len(scene["objects"])) if target == "count" else scene["objects"][0][target]
            assert names[row["label"]] == truth
    with pytest.raises(ValueError, match="unknown classification target 'mood'"):
        to_classification(shapes["train"], target="mood")


def test_vqa_caption_and_conversation_views(shapes):
    vqa = to_vqa(shapes["validation"])
    assert len(vqa) == sum(len(s["questions"]) for s in shapes["validation"])
    assert set(vqa["level"]) == set(LEVELS)
    pairs = to_caption_pairs(shapes["train"])
    assert pairs.column_names == ["image", "text"] and pairs["text"] == shapes["train"]["caption"]
    chats = to_conversations(shapes["train"])
    messages = chats[0]["messages"]
    questions = shapes["train"][0]["questions"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(questions)
    assert messages[0]["content"][0] == {"type": "image", "text": None}
    assert messages[0]["content"][1]["text"] == questions[0]["question"] + SHORT_ANSWER_PROMPT
    assert [m["content"][-1]["text"] for m in messages[1::2]] == [q["answer"] for q in questions]
    assert all(len(m["content"]) == 1 for m in messages[1:])


def test_cli_writes_the_benchmark_and_its_layouts(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert hive_main(["data", "shapes", "--out", str(out), "--seed", "7", "--num-train", "6", "--num-eval", "3",
                      "--image-size", "32"]) == 0
    assert "train 6, validation 3, test 3, test_compositional 3 scenes generated" in capsys.readouterr().out
    scenes = datasets.load_from_disk(str(out))
    assert sorted(scenes) == sorted(SPLITS)
    expected = generate_shapes(seed=7, num_train=6, num_validation=3, num_test=3, num_test_compositional=3,
                               config=HiveShapesConfig(image_size=32))
    assert scenes["train"].data.table.equals(expected["train"].data.table)
    for view, convert in (("mme", to_mme), ("scienceqa", to_scienceqa), ("okvqa", to_okvqa), ("vqa", to_vqa)):
        loaded = datasets.load_from_disk(str(out / view))
        assert sorted(loaded) == ["test", "test_compositional", "validation"]
        assert loaded["test"].to_dict() == convert(expected["test"]).to_dict()
    probe = datasets.load_from_disk(str(out / "classification"))
    assert sorted(probe) == sorted(SPLITS) and probe["train"].features["label"].names == list(SHAPES)

    assert hive_main(["data", "shapes", "--out", str(out), "--num-train", "2", "--num-eval", "1"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert len(datasets.load_from_disk(str(out))["train"]) == 6
    assert hive_main(["data", "shapes", "--out", str(out), "--num-train", "2", "--num-eval", "1",
                      "--format", "parquet", "--overwrite"]) == 0
    parquet = datasets.load_dataset("parquet", data_files={"test": str(out / "mme" / "test.parquet")}, split="test",
                                    cache_dir=str(tmp_path / "cache"))
    assert len(parquet) == 2 and parquet.features["image"] == datasets.Image()
    assert not (out / "dataset_dict.json").exists() and (out / "train.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hive-shapes")] == []
