"""Loaders for real training data, through `datasets`, in memory or streaming, normalised to `schema`'s layouts.

Sources (`format=`, guessed from the path when omitted):
    disk         a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`)
    parquet      `.parquet` files, a glob of them, or a folder holding them
    imagefolder  a folder of images with `metadata.jsonl` or `metadata.csv` (`file_name` + text columns)
    webdataset   `.tar` shards (`<key>.jpg`/`.png` + `<key>.txt`), read by datasets' `webdataset` builder
    llava        LLaVA conversation JSON (a list) or JSON Lines, with an image root folder

Unreadable, corrupt or missing images are skipped and recorded in a `HiveDataReport`; with `strict=True` the
first one raises a `ValueError` naming the file and the row. Malformed conversations always raise a
`ValueError` naming the row. In memory, every image is checked when the dataset is loaded; streaming, each is
checked as it is read.
"""

import glob
import io
import json
import os

import datasets
from PIL import Image, UnidentifiedImageError

from .report import HiveDataReport
from .schema import chat_features, image_features, pair_features, text_message

FORMATS = ("disk", "parquet", "imagefolder", "webdataset", "llava")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
TEXT_COLUMNS = ("text", "caption", "txt")
IMAGE_TAG = "<image>"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image_text_pairs(source, *, format: str | None = None, split: str = "train", streaming: bool = False,
                          image_column: str | None = None, text_column: str | None = None, strict: bool = False,
                          report: HiveDataReport | None = None, cache_dir: str | None = None):
    """Image-text pairs (stage 2) as a `Dataset` (or `IterableDataset` when streaming) with columns image, text.

    Args:
        source: a path, a glob, or a list of paths (see the module docstring for the formats).
        format: one of `FORMATS` except `llava`; guessed from `source` when None.
        split: split to read from a `DatasetDict` folder or from the data files.
        streaming: return an `IterableDataset` that reads lazily, for data larger than memory.
        image_column: source column holding the image; by default the first of `IMAGE_COLUMNS` present.
        text_column: source column holding the text; by default the first of `TEXT_COLUMNS` present.
        strict: raise on the first unreadable image instead of skipping it.
        report: `HiveDataReport` that records skipped rows; one that only logs is used when None.
        cache_dir: `datasets` cache folder for the builders (parquet, imagefolder, webdataset).

    Example:
        >>> from hive_vlm.data.loaders import load_image_text_pairs
        >>> from hive_vlm.data.report import HiveDataReport
        >>> report = HiveDataReport()
        >>> pairs = load_image_text_pairs("shards/*.tar", streaming=True, report=report)  # doctest: +SKIP
        >>> next(iter(pairs))  # doctest: +SKIP
        {'image': <PIL.PngImagePlugin.PngImageFile image mode=RGB size=64x64>, 'text': 'A large red ...'}
        >>> print(report.summary())  # doctest: +SKIP
    """
    dataset, kind = _load_raw(source, format, split, streaming, cache_dir)
    columns = _column_names(dataset)
    image = _pick_column(columns, image_column, IMAGE_COLUMNS, "image", source)
    text = _pick_column(columns, text_column, TEXT_COLUMNS, "text", source)
    dataset = _drop_unreadable_images(dataset, image, kind, strict, report or HiveDataReport(), text_column=text)
    return _normalise(dataset, {image: "image", text: "text"}, pair_features())


def load_images(source, *, format: str | None = None, split: str = "train", streaming: bool = False,
                image_column: str | None = None, strict: bool = False, report: HiveDataReport | None = None,
                cache_dir: str | None = None):
    """Images only (stage 1): a `Dataset` (or `IterableDataset`) with one column, image.

    Takes the same sources and arguments as `load_image_text_pairs`; an imagefolder needs no metadata file.

    Example:
        >>> from hive_vlm.data.loaders import load_images
        >>> images = load_images("photos/", format="imagefolder", streaming=True)  # doctest: +SKIP
    """
    dataset, kind = _load_raw(source, format, split, streaming, cache_dir)
    image = _pick_column(_column_names(dataset), image_column, IMAGE_COLUMNS, "image", source)
    dataset = _drop_unreadable_images(dataset, image, kind, strict, report or HiveDataReport())
    return _normalise(dataset, {image: "image"}, image_features())


def load_conversations(source, image_root: str | None = None, *, streaming: bool = False, strict: bool = False,
                       report: HiveDataReport | None = None):
    """LLaVA-style conversations (stage 3) as a `Dataset` (or `IterableDataset`) with columns image, messages.

    Each row of the JSON list (or JSON Lines file) is `{"image": path, "conversations": [{"from": "human",
    "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}`; rows without "image" are text-only and
    get `image=None`. Turns must alternate human/gpt, starting with human and ending with gpt (one leading
    "system" turn is allowed). The `<image>` tag marks that the row has an image; HIVE feeds images through
    cross-attention only, so the tag is removed from the text, and the first user message gets an image part.

    Args:
        source: path of the `.json` or `.jsonl` file.
        image_root: folder the image paths are relative to; the JSON file's folder when None.
        streaming: read rows lazily (a `.json` list is still parsed whole when the stream starts).
        strict: raise on the first unreadable image instead of skipping its row.
        report: `HiveDataReport` that records skipped rows.

    Raises:
        ValueError: naming the row, for a missing field, turns that do not alternate, an unknown role, an
            `<image>` tag in a row without an image, or more than one image.

    Example:
        >>> from hive_vlm.data.loaders import load_conversations
        >>> chats = load_conversations("llava_v1_5_mix665k.json", image_root="data/")  # doctest: +SKIP
        >>> chats[0]["messages"][0]  # doctest: +SKIP
        {'role': 'user', 'content': [{'type': 'image', 'text': None}, {'type': 'text', 'text': 'What is ...?'}]}
    """
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"conversation file {path!r} does not exist.")
    root = os.path.abspath(image_root if image_root is not None else os.path.dirname(os.path.abspath(path)))
    kwargs = {"path": path, "image_root": root, "strict": strict, "report": report or HiveDataReport()}
    if streaming:
        return datasets.IterableDataset.from_generator(_conversation_rows, features=chat_features(), gen_kwargs=kwargs)
    return datasets.Dataset.from_list(list(_conversation_rows(**kwargs)), features=chat_features())


def guess_format(source) -> str:
    """The `FORMATS` entry a path (or list of paths) most likely is; ValueError when none fits."""
    paths = [os.fspath(p) for p in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    if not paths:
        raise ValueError("no data files given.")
    first = paths[0]
    if first.endswith(".parquet"):
        return "parquet"
    if first.endswith(".tar"):
        return "webdataset"
    if first.endswith((".json", ".jsonl")):
        return "llava"
    if os.path.isdir(first):
        if any(os.path.exists(os.path.join(first, name)) for name in ("dataset_dict.json", "state.json")):
            return "disk"
        if glob.glob(os.path.join(first, "**", "*.parquet"), recursive=True):
            return "parquet"
        if glob.glob(os.path.join(first, "*.tar")):
            return "webdataset"
        return "imagefolder"
    raise ValueError(f"cannot tell the format of {first!r}: it does not exist or has an unknown extension. "
                     f"Pass format= one of {FORMATS}.")


def _load_raw(source, format, split, streaming, cache_dir):
    kind = format or guess_format(source)
    if kind not in FORMATS or kind == "llava":
        raise ValueError(f"format {kind!r} cannot be read here; expected one of {FORMATS[:-1]} "
                         f"(LLaVA JSON goes through load_conversations).")
    if kind == "disk":
        path = os.fspath(source)
        if not os.path.isdir(path):
            raise ValueError(f"save_to_disk folder {path!r} does not exist.")
        index = os.path.join(path, "dataset_dict.json")
        if os.path.isfile(index):  # one split of a DatasetDict, read alone: an empty sibling split breaks load_from_disk
            with open(index, encoding="utf-8") as handle:
                splits = json.load(handle)["splits"]
            if split not in splits:
                raise ValueError(f"split {split!r} is not in {path!r}; it has {sorted(splits)}.")
            path = os.path.join(path, split)
        dataset = datasets.load_from_disk(path)
        return (dataset.to_iterable_dataset() if streaming else dataset), kind
    if kind == "imagefolder":
        path = os.fspath(source)
        if not os.path.isdir(path):
            raise ValueError(f"imagefolder {path!r} does not exist.")
        return datasets.load_dataset("imagefolder", data_dir=path, split=split, streaming=streaming,
                                     cache_dir=cache_dir), kind
    files = _data_files(source, ".parquet" if kind == "parquet" else ".tar")
    return datasets.load_dataset(kind, data_files={split: files}, split=split, streaming=streaming,
                                 cache_dir=cache_dir), kind


def _data_files(source, extension):
    paths = [os.fspath(p) for p in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "**", f"*{extension}"), recursive=True))
        else:
            found = sorted(glob.glob(path))
        if not found:
            raise ValueError(f"no {extension} files found at {path!r}.")
        files.extend(found)
    return files


def _column_names(dataset):
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(dataset.features or next(iter(dataset)).keys())


def _name(source):
    """A source as the user wrote it: paths as strings, lists of paths as lists of strings."""
    if isinstance(source, (list, tuple)):
        return [os.fspath(item) if isinstance(item, os.PathLike) else item for item in source]
    return os.fspath(source) if isinstance(source, os.PathLike) else source


def _pick_column(columns, requested, candidates, what, source):
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{what} column {requested!r} is not in {_name(source)!r}; its columns are {columns}.")
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"no {what} column in {_name(source)!r}: looked for {list(candidates)}, found {columns}. "
                     f"Pass {what}_column=.")


def image_error(value) -> str | None:
    """Why `value` (an undecoded `Image` value: None, bytes/path dict, or path) cannot be read; None if it can."""
    if value is None:
        return "no image"
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    data, path = value.get("bytes"), value.get("path")
    try:
        with Image.open(io.BytesIO(data) if data else path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not a recognised image file"
    except _UNREADABLE as error:
        return f"{type(error).__name__}: {error}"
    return None


def _describe_row(index, example, kind, image_column):
    value = example.get(image_column)
    path = value.get("path") if isinstance(value, dict) else value
    if kind == "webdataset" and example.get("__key__") is not None:
        return f"row {index} (key {example['__key__']!r})", f"{example.get('__url__')}:{path or example['__key__']}"
    return f"row {index}", path or f"<bytes in row {index}>"


def _check_row(index, example, kind, image_column, text_column, strict, report) -> bool:
    row, file = _describe_row(index, example, kind, image_column)
    if text_column is not None and not isinstance(example.get(text_column), str):
        raise ValueError(f"{row}: text column {text_column!r} holds {example.get(text_column)!r}, not a string.")
    error = image_error(example.get(image_column))
    if error is None:
        return True
    if strict:
        raise ValueError(f"{row}: image {file!r} cannot be read ({error}). Fix or remove it, or load with "
                         f"strict=False to skip such rows.")
    report.skip_image(row, file, error)
    return False


def _drop_unreadable_images(dataset, image_column, kind, strict, report, text_column=None):
    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        checked = raw.filter(
            lambda example, index: _check_row(index, example, kind, image_column, text_column, strict, report),
            with_indices=True,
        )
        return checked.cast_column(image_column, datasets.Image())
    wanted = [c for c in (image_column, text_column, "__key__", "__url__") if c is not None and c in raw.column_names]
    keep, index = [], 0
    for batch in raw.select_columns(wanted).iter(batch_size=256):
        for i in range(len(batch[image_column])):
            example = {name: batch[name][i] for name in wanted}
            if _check_row(index, example, kind, image_column, text_column, strict, report):
                keep.append(index)
            index += 1
    return dataset if len(keep) == len(dataset) else dataset.select(keep)


def _normalise(dataset, renames, features):
    dataset = dataset.select_columns(list(renames))
    dataset = dataset.rename_columns({old: new for old, new in renames.items() if old != new})
    return dataset if dataset.features == features else dataset.cast(features)


def read_records(path):
    """(row, record) pairs of a JSON list or a JSON Lines file."""
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            for number, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: row {number} is not valid JSON ({error}).") from None
            return
        try:
            records = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of conversations, got {type(records).__name__}.")
    yield from enumerate(records)


def _conversation_rows(path, image_root, strict, report):
    for number, record in read_records(path):
        row = f"row {number}"
        if isinstance(record, dict) and record.get("id") is not None:
            row += f" (id {record['id']!r})"
        row += f" of {path}"
        image, messages = _parse_conversation(record, row)
        if image is not None:
            file = image if os.path.isabs(image) else os.path.join(image_root, image)
            error = image_error(file)
            if error is not None:
                if strict:
                    raise ValueError(f"{row}: image {file!r} cannot be read ({error}). Fix or remove it, or load "
                                     f"with strict=False to skip such rows.")
                report.skip_image(row, file, error)
                continue
            image = file
        yield {"image": image, "messages": messages}


def _parse_conversation(record, row):
    """(image path or None, messages) of one LLaVA record; ValueError naming `row` when it is malformed."""
    if not isinstance(record, dict):
        raise ValueError(f"{row}: expected an object with 'conversations', got {type(record).__name__}.")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{row}: missing field 'conversations' (a non-empty list of turns).")
    image = record.get("image")
    if isinstance(image, list):
        raise ValueError(f"{row}: 'image' is a list of {len(image)}; HIVE takes one image per conversation.")
    if image is not None and (not isinstance(image, str) or not image):
        raise ValueError(f"{row}: 'image' must be a non-empty path string, got {image!r}.")
    messages, tags = [], 0
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"{row}: turn {j} must have the fields 'from' and 'value', got {turn!r}.")
        speaker, text = turn["from"], turn["value"]
        if not isinstance(text, str):
            raise ValueError(f"{row}: turn {j} 'value' must be a string, got {type(text).__name__}.")
        if speaker == "system" and j == 0:
            messages.append(text_message("system", text))
            continue
        if speaker in USER_ROLES:
            role = "user"
        elif speaker in ASSISTANT_ROLES:
            role = "assistant"
        else:
            raise ValueError(f"{row}: turn {j} comes from {speaker!r}; expected 'human' or 'gpt'.")
        expected = "user" if not messages or messages[-1]["role"] != "user" else "assistant"
        if role != expected:
            raise ValueError(f"{row}: turns do not alternate: turn {j} is from {speaker!r} but a "
                             f"{'human' if expected == 'user' else 'gpt'} turn was expected.")
        if IMAGE_TAG in text:
            tags += text.count(IMAGE_TAG)
            if role != "user":
                raise ValueError(f"{row}: turn {j}: the {IMAGE_TAG} tag belongs in a human turn.")
            if image is None:
                raise ValueError(f"{row}: turn {j} has an {IMAGE_TAG} tag but the row has no 'image'.")
            text = text.replace(IMAGE_TAG, "").strip()
        messages.append(text_message(role, text))
    if tags > 1:
        raise ValueError(f"{row}: {tags} {IMAGE_TAG} tags; HIVE takes one image per conversation.")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{row}: the last turn must come from 'gpt' (an answer to learn from).")
    if image is not None:
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"].insert(0, {"type": "image", "text": None})
    return image, messages
