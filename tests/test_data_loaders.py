"""Loaders: every source format in memory and streaming, unreadable images skipped and counted, strict mode,
malformed LLaVA conversations."""

import csv
import io
import json
import tarfile

import datasets
import numpy as np
import pytest
from PIL import Image

from hive_vlm.cli import main as hive_main
from hive_vlm.data.loaders import guess_format, load_conversations, load_image_text_pairs, load_images
from hive_vlm.data.report import HiveDataReport
from hive_vlm.data.schema import chat_features, image_features, pair_features

COLORS = {"zero": (255, 0, 0), "two": (0, 0, 255)}
CORRUPT = b"\x89PNG\r\n\x1a\n this is not an image"


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_disk(root):
    """Rows: 0 good, 1 corrupt bytes, 2 good, 3 no image at all (save_to_disk embeds files, so none can go missing)."""
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "id": datasets.Value("int32")})
    rows = {"image": [{"bytes": png(COLORS["zero"]), "path": None}, {"bytes": CORRUPT, "path": None},
                      {"bytes": png(COLORS["two"]), "path": None}, None],
            "caption": ["zero", "one", "two", "three"], "id": [0, 1, 2, 3]}
    dataset = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": dataset, "validation": dataset.select([0])}).save_to_disk(str(root / "disk"))
    return root / "disk", "caption"


def write_parquet(root):
    folder, _ = write_disk(root)
    (root / "parquet").mkdir()
    datasets.load_from_disk(str(folder))["train"].to_parquet(str(root / "parquet" / "part-0.parquet"))
    return root / "parquet", "caption"


def write_imagefolder(root, metadata):
    folder = root / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(COLORS["zero"]))
    (folder / "b.png").write_bytes(CORRUPT)
    (folder / "c.png").write_bytes(png(COLORS["two"]))
    rows = [("a.png", "zero"), ("b.png", "one"), ("c.png", "two"), ("d.png", "three")]
    if metadata == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))
    else:
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "text"])
            writer.writerows(rows)
    return folder, "text"


def write_webdataset(root):
    """Samples: s0 good, s1 corrupt, s2 good (in a second shard), s3 caption without an image."""
    shards = []
    for number, samples in enumerate([[("s0", png(COLORS["zero"]), "zero"), ("s1", CORRUPT, "one")],
                                      [("s2", png(COLORS["two"]), "two"), ("s3", None, "three")]]):
        path = root / f"shard-{number:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, image, text in samples:
                files = ([("png", image)] if image is not None else []) + [("txt", text.encode())]
                for extension, payload in files:
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(str(path))
    return shards, "txt"


SOURCES = {
    "disk": write_disk,
    "parquet": write_parquet,
    "imagefolder-jsonl": lambda root: write_imagefolder(root, "jsonl"),
    "imagefolder-csv": lambda root: write_imagefolder(root, "csv"),
    "webdataset": write_webdataset,
}
EXPECTED_FORMAT = {"disk": "disk", "parquet": "parquet", "imagefolder-jsonl": "imagefolder",
                   "imagefolder-csv": "imagefolder", "webdataset": "webdataset"}


def mean_color(image):
    return tuple(int(v) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0))


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_pairs_load_and_skip_unreadable_images(tmp_path, source, streaming):
    path, _ = SOURCES[source](tmp_path)
    assert guess_format(path) == EXPECTED_FORMAT[source]
    report = HiveDataReport()
    pairs = load_image_text_pairs(path, streaming=streaming, report=report, cache_dir=str(tmp_path / "cache"))
    assert isinstance(pairs, datasets.IterableDataset if streaming else datasets.Dataset)
    assert pairs.features == pair_features()
    rows = list(pairs)
    assert [row["text"] for row in rows] == ["zero", "two"]
    assert [mean_color(row["image"]) for row in rows] == [COLORS["zero"], COLORS["two"]]
    assert report.as_dict() == {"skipped_images": 2, "truncated": 0, "dropped": 0}
    assert [row.split(" ")[1] for row in report.skipped_images] == ["1", "3"]
    if streaming:
        list(pairs)  # a second pass over the stream counts each bad row once
        assert len(report.skipped_images) == 2
    assert "2 unreadable images skipped" in report.summary()


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
@pytest.mark.parametrize("source, bad_file", [("disk", "<bytes in row 1>"), ("imagefolder-jsonl", "b.png"),
                                              ("webdataset", "s1.png")])
def test_strict_mode_names_the_file_and_the_row(tmp_path, source, bad_file, streaming):
    path, _ = SOURCES[source](tmp_path)
    with pytest.raises(ValueError, match=rf"row 1.*image '[^']*{bad_file}' cannot be read"):
        list(load_image_text_pairs(path, streaming=streaming, strict=True, cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
@pytest.mark.parametrize("source", ["disk", "parquet", "imagefolder-jsonl", "webdataset"])
def test_images_only(tmp_path, source, streaming):
    path, _ = SOURCES[source](tmp_path)
    report = HiveDataReport()
    images = load_images(path, streaming=streaming, report=report, cache_dir=str(tmp_path / "cache"))
    assert images.features == image_features()
    assert [mean_color(row["image"]) for row in images] == [COLORS["zero"], COLORS["two"]]
    assert len(report.skipped_images) == 2


def test_imagefolder_without_metadata_gives_images(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "x.png").write_bytes(png(COLORS["two"]))
    (folder / "y.png").write_bytes(CORRUPT)
    report = HiveDataReport()
    images = load_images(folder, report=report, cache_dir=str(tmp_path / "cache"))
    assert [mean_color(row["image"]) for row in images] == [COLORS["two"]]
    assert list(report.skipped_images.values())[0][0].endswith("y.png")


def test_split_and_columns_are_chosen_or_refused_clearly(tmp_path):
    path, _ = write_disk(tmp_path)
    validation = load_image_text_pairs(path, split="validation")
    assert validation["text"] == ["zero"]
    with pytest.raises(ValueError, match=r"split 'test' is not in .*\['train', 'validation'\]"):
        load_image_text_pairs(path, split="test")
    with pytest.raises(ValueError, match="text column 'title' is not in"):
        load_image_text_pairs(path, text_column="title")
    with pytest.raises(ValueError, match=r"no text column .*Pass text_column="):
        load_image_text_pairs(_only_images(tmp_path))
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_image_text_pairs(tmp_path / "nothing.bin")
    with pytest.raises(ValueError, match=r"no \.tar files found"):
        load_image_text_pairs(str(tmp_path / "*.tar"), format="webdataset")


def _only_images(root):
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png(COLORS["zero"]), "path": None}]},
                                         features=image_features())
    dataset.save_to_disk(str(root / "only-images"))
    return root / "only-images"


def test_a_caption_that_is_not_text_names_its_row(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png(COLORS["zero"]), "path": None}] * 2,
                                          "text": ["fine", None]}, features=features)
    dataset.save_to_disk(str(tmp_path / "none-text"))
    with pytest.raises(ValueError, match="row 1: text column 'text' holds None"):
        load_image_text_pairs(tmp_path / "none-text")


# LLaVA conversations

def llava_rows():
    return [
        {"id": "a", "image": "ok.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "c", "image": "corrupt.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Noise."}]},
        {"id": "d", "image": "missing.png", "conversations": [
            {"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "Nothing."}]},
        {"id": "e", "image": "sub/ok.png", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Color?\n<image>"},
            {"from": "gpt", "value": "Blue."}]},
    ]


def write_llava(root, rows, suffix=".json"):
    images = root / "images"
    (images / "sub").mkdir(parents=True, exist_ok=True)
    (images / "ok.png").write_bytes(png(COLORS["zero"]))
    (images / "sub" / "ok.png").write_bytes(png(COLORS["two"]))
    (images / "corrupt.png").write_bytes(CORRUPT)
    path = root / f"chat{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, images


def user(text, image=False):
    return {"role": "user", "content": ([{"type": "image", "text": None}] if image else [])
            + [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava_conversations_are_normalised_and_bad_images_skipped(tmp_path, suffix, streaming):
    path, images = write_llava(tmp_path, llava_rows(), suffix)
    report = HiveDataReport()
    chats = load_conversations(path, image_root=images, streaming=streaming, report=report)
    assert chats.features == chat_features()
    rows = list(chats)
    assert [m for row in rows for m in row["messages"]] == [
        user("What color is it?", image=True), assistant("Red."), user("Are you sure?"), assistant("Yes."),
        user("Say hi."), assistant("Hi."),
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, user("Color?", image=True),
        assistant("Blue."),
    ]
    assert [None if row["image"] is None else mean_color(row["image"]) for row in rows] == [
        COLORS["zero"], None, COLORS["two"]]
    assert sorted(report.skipped_images) == [f"row 2 (id 'c') of {path}", f"row 3 (id 'd') of {path}"]
    assert report.skipped_images[f"row 3 (id 'd') of {path}"][0] == str(images / "missing.png")


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
def test_llava_strict_names_the_image_and_row(tmp_path, streaming):
    path, images = write_llava(tmp_path, llava_rows())
    with pytest.raises(ValueError, match=r"row 2 \(id 'c'\).*image '.*corrupt\.png' cannot be read"):
        list(load_conversations(path, image_root=images, streaming=streaming, strict=True))


def test_llava_image_root_defaults_to_the_json_folder(tmp_path):
    path, _ = write_llava(tmp_path, [{"image": "images/ok.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "Red."}]}])
    row = load_conversations(path)[0]
    assert mean_color(row["image"]) == COLORS["zero"] and row["messages"][0] == user("", image=True)


MALFORMED = [
    ({"image": "ok.png"}, r"missing field 'conversations'"),
    ({"conversations": []}, r"missing field 'conversations'"),
    ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, r"turn 0 must have the fields"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]},
     r"turns do not alternate: turn 1 is from 'human' but a gpt turn was expected"),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, r"turns do not alternate: turn 0 is from 'gpt'"),
    ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
     r"turn 0 has an <image> tag but the row has no 'image'"),
    ({"image": "ok.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                           {"from": "gpt", "value": "a"}]}, r"2 <image> tags"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     r"turn 1 comes from 'bot'"),
    ({"conversations": [{"from": "human", "value": "q"}]}, r"the last turn must come from 'gpt'"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
     r"turn 0 'value' must be a string"),
    ({"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     r"'image' is a list of 2; HIVE takes one image per conversation"),
    ("just a string", r"expected an object with 'conversations'"),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["memory", "streaming"])
@pytest.mark.parametrize("record, message", MALFORMED)
def test_malformed_conversation_names_the_row(tmp_path, record, message, streaming):
    good = llava_rows()[1]
    path, images = write_llava(tmp_path, [good, good, record])
    with pytest.raises(ValueError, match=rf"row 2 of .*chat\.json: {message}"):
        list(load_conversations(path, image_root=images, streaming=streaming))


def test_invalid_json_lines_name_the_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(llava_rows()[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"row 1 is not valid JSON"):
        load_conversations(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_conversations(tmp_path / "absent.json")


def test_inspect_command_reports_skipped_rows(tmp_path, capsys):
    path, images = write_llava(tmp_path, llava_rows())
    assert hive_main(["data", "inspect", "--path", str(path), "--stage", "3", "--image-root", str(images)]) == 0
    out = capsys.readouterr().out
    assert "3 usable rows" in out and "2 unreadable images skipped" in out
    (tmp_path / "other").mkdir()
    folder, _ = write_imagefolder(tmp_path / "other", "jsonl")
    assert hive_main(["data", "inspect", "--path", str(folder), "--streaming", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "2 usable rows; columns: image, text" in capsys.readouterr().out
