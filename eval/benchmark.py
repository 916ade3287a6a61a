"""The benchmark adapter interface, and the loader every adapter uses to read a published dataset layout."""

import json
from collections import Counter
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import evaluate
import PIL.Image



METRICS_DIR = Path(__file__).parent / "metrics"
_SHARD_NAME = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")


@dataclass
class HiveExamples:
    """
    The questions of a benchmark as the runner reads them.

    Args:
        rows (`datasets.Dataset`): one row per question, images left undecoded.
        images (`datasets.Dataset`, *optional*): a separate image table, when the layout keeps images apart
            (GQA); then `image_index[i]` is the row of `images` that holds the image of `rows[i]`.
        image_index (`list[int]`, *optional*): see `images`.
    """

    rows: datasets.Dataset
    images: datasets.Dataset | None = None
    image_index: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> PIL.Image.Image:
        """The RGB image of question `index`."""
        if self.images is None:
            value = self.rows[index]["image"]
        else:
            value = self.images[self.image_index[index]]["image"]
        return to_rgb(value, where=f"row {index}")


class HiveBenchmark:
    """
    One benchmark: how to read its published layout, prompt the model, and score the answers.

    A subclass sets the class attributes and implements `load`, `build_prompt`, `reference` and `score`; the
    generic runner (`hive_vlm.eval.runner.evaluate_benchmark`) does the rest. Scoring goes through an `evaluate`
    module in `eval/metrics/` (see `load_metric`).

    Class attributes:
        name (`str`): the name `hive eval --benchmark` takes.
        protocols (`tuple[str, ...]`): the scoring variants; the first is the default.
        prompt_template (`str`): the prompt, in words, as stored with the results.
        split (`str`): the split read when none is given.
        max_new_tokens (`int`): the generation budget of one answer.
        id_column (`str`, *optional*): the column holding a unique question id; `None` uses the row number.

    Example:
        >>> from hive_vlm.eval.gqa import HiveGQABenchmark
        >>> benchmark = HiveGQABenchmark()
        >>> benchmark.build_prompt({"question": "Is the cup on the left?"})
        'Is the cup on the left?\\nAnswer the question using a single word or phrase.'
    """

    name: str = ""
    protocols: tuple[str, ...] = ()
    prompt_template: str = ""
    split: str = "test"
    max_new_tokens: int = 16
    id_column: str | None = None

    def load(self, path, limit: int | None = None, split: str | None = None) -> HiveExamples:
        raise NotImplementedError

    def build_prompt(self, example: dict) -> str:
        raise NotImplementedError

    def reference(self, example: dict) -> dict:
        """The JSON-serialisable fields `score` needs for this question (stored with each prediction)."""
        raise NotImplementedError

    def score(self, predictions: list[str], references: list[dict], protocol: str) -> dict:
        raise NotImplementedError

    def example_ids(self, rows: datasets.Dataset) -> list[str]:
        """A unique, stable id per question: the `id_column` value, or the row number."""
        if self.id_column is None:
            return [str(index) for index in range(len(rows))]
        return [str(value) for value in rows[self.id_column]]

    def resolve_protocol(self, protocol: str | None) -> str:
        if protocol is None:
            return self.protocols[0]
        if protocol not in self.protocols:
            raise ValueError(f"{self.name} has no protocol {protocol!r}; choose one of {self.protocols}.")
        return protocol


def load_metric(name: str):
    """The `evaluate` module `eval/metrics/<name>`, loaded offline from its folder."""
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def load_published(path, config: str | None = None, split: str | None = None) -> datasets.Dataset:
    """
    Read one split of a dataset in any of its published forms, with image columns left undecoded.

    Accepted:
    - a folder written by `save_to_disk` (a `Dataset`, or a `DatasetDict` whose `split` is taken);
    - one parquet file;
    - a folder of parquet files laid out like the Hub repository (the files of the HF dataset repo): a sub-folder
      named `config` is entered when there is one, and shards named `<split>-00000-of-00001.parquet` are grouped
      by split (lmms-lab/MME: `data/test-*.parquet`; lmms-lab/GQA: `<config>/testdev-*.parquet`);
    - anything else is taken as a Hub dataset id and read with `datasets.load_dataset(path, config, split=split)`.

    Args:
        path (`str` or `os.PathLike`): where the dataset is.
        config (`str`, *optional*): the configuration (sub-folder) to read.
        split (`str`, *optional*): the split; optional when there is only one.

    Example:
        >>> rows = load_published("lmms-lab/GQA", "testdev_balanced_instructions", split="testdev")  # doctest: +SKIP
    """
    local = Path(path)
    if local.is_file():
        if local.suffix != ".parquet":
            raise ValueError(f"{local} is a file but not a parquet file; pass a parquet file or a dataset folder.")
        dataset = datasets.load_dataset("parquet", data_files=str(local), split="train")
    elif local.is_dir():
        if (local / "state.json").exists():
            dataset = datasets.load_from_disk(str(local))
        elif (local / "dataset_dict.json").exists():
            dataset = _load_saved_split(local, split)
        elif config is not None and (local / config).is_dir():
            return load_published(local / config, None, split)
        else:
            dataset = _load_parquet_folder(local, split)
    else:
        try:
            dataset = datasets.load_dataset(str(path), config, split=split)
        except Exception as error:
            raise ValueError(
                f"{path} is neither a local file or folder nor a dataset the Hub could serve ({error}). Pass a "
                "save_to_disk folder, a parquet file, a folder of the dataset repository's files, or a Hub id."
            ) from error
    return without_image_decoding(dataset)


def _load_saved_split(folder: Path, split: str | None) -> datasets.Dataset:
    """One split of a `save_to_disk` DatasetDict, without loading the others."""
    splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
    if split not in splits:
        if len(splits) != 1:
            raise ValueError(f"{folder} holds the splits {sorted(splits)}; choose one (asked for {split!r}).")
        split = splits[0]
    return datasets.load_from_disk(str(folder / split))


def _load_parquet_folder(folder: Path, split: str | None) -> datasets.Dataset:
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise ValueError(
            f"{folder} holds no parquet files and is not a save_to_disk folder; pass the dataset's folder, one "
            "of its parquet files, or its configuration sub-folder."
        )
    parents = sorted({str(file.parent.relative_to(folder)) for file in files})
    if len(parents) > 1:
        raise ValueError(
            f"{folder} holds parquet files in several configuration folders {parents}; pass the configuration's "
            "folder instead."
        )
    by_split = {}
    for file in files:
        match = _SHARD_NAME.match(file.stem)
        by_split.setdefault(match["split"] if match else "train", []).append(str(file))
    if split in by_split:
        chosen = by_split[split]
    elif len(by_split) == 1:
        chosen = next(iter(by_split.values()))
    else:
        raise ValueError(f"{folder} holds the splits {sorted(by_split)}; choose one (asked for {split!r}).")
    return datasets.load_dataset("parquet", data_files=chosen, split="train")


def without_image_decoding(dataset: datasets.Dataset) -> datasets.Dataset:
    """The same rows with every `Image` column returning its undecoded {"bytes", "path"} value."""
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def require_columns(rows: datasets.Dataset, columns, where: str) -> None:
    missing = [column for column in columns if column not in rows.column_names]
    if missing:
        raise ValueError(
            f"{where} lacks the column(s) {missing} of the published layout; it has {rows.column_names}."
        )


def numbered_ids(keys, separator: str) -> list[str]:
    """Unique ids for rows that share a key (several questions per image or scene): the key, `separator` and the
    row's rank among the rows with that key, e.g. `scene-3/0`, `scene-3/1`."""
    seen = Counter()
    ids = []
    for key in keys:
        ids.append(f"{key}{separator}{seen[key]}")
        seen[key] += 1
    return ids


def first_rows(rows: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    if limit is None:
        return rows
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}.")
    return rows.select(range(min(limit, len(rows))))


def to_rgb(value, where: str = "image") -> PIL.Image.Image:
    """An RGB PIL image from a decoded image, or an undecoded `datasets.Image` value ({"bytes", "path"})."""
    if value is None:
        raise ValueError(f"{where} has no image.")
    if isinstance(value, dict):
        value = datasets.Image().decode_example(value)
    if not isinstance(value, PIL.Image.Image):
        raise TypeError(f"{where}: expected an image, got {type(value).__name__}.")
    return value.convert("RGB")
