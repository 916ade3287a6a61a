"""A recipe: one YAML file holding the data, the model and each stage's hyperparameters of one HIVE setup.

Example:
    >>> from hive_vlm.training.recipe import load_recipe
    >>> recipe = load_recipe("recipes/tiny-shapes.yaml", overrides=["stage2.max_steps=5"])
    >>> recipe.stage_arguments(2, "outputs/tiny/stage2").max_steps
    5
"""

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from huggingface_hub.errors import StrictDataclassError

from modeling_hive import HiveConfig

from .alignment_config import HiveAlignmentConfig
from .finetune_config import HiveFinetuneConfig
from .lm_config import HiveLMConfig
from .mim_config import HiveMIMConfig


STAGE_CONFIGS = {0: HiveLMConfig, 1: HiveMIMConfig, 2: HiveAlignmentConfig, 3: HiveFinetuneConfig}
DATA_FORMATS = ("shapes", "disk", "parquet", "imagefolder", "webdataset", "llava", None)


@dataclass
class HiveModelRecipe:
    """Where the backbones come from: a Hub id or folder (`*_model`), or a config to build with random weights."""

    vision_model: str | None = None
    vision_config: dict | None = None
    text_model: str | None = None
    text_config: dict | None = None
    hive: dict = field(default_factory=dict)  # HiveConfig fields: cross_attention_layers, hierarchy_mode, ...
    dtype: str | None = None  # dtype to load the backbones in, e.g. "bfloat16"


@dataclass
class HiveDataSource:
    """One stage's training data: `source: shapes` (the generated benchmark) or a path in a loader format."""

    source: str
    format: str | None = None
    image_root: str | None = None  # LLaVA JSON: folder the image paths are relative to
    split: str = "train"
    streaming: bool = False
    strict: bool = False  # raise on a bad image instead of skipping and counting it


@dataclass
class HiveDataRecipe:
    shapes: dict = field(default_factory=dict)  # generator settings when a stage uses `source: shapes`
    tokenizer: str | None = None  # "shapes": build a word-level tokenizer from the benchmark's text
    max_length: int = 256
    stage1: HiveDataSource | None = None
    stage2: HiveDataSource | None = None
    stage3: HiveDataSource | None = None


@dataclass
class HiveEvalEntry:
    """One benchmark a study scores: an adapter of `hive eval` on a dataset in its published layout.

    `data: shapes` is hive-shapes as the recipe generates it (`split` test, test_compositional or validation); with
    `benchmark` mme, scienceqa or okvqa it is that benchmark's layout of hive-shapes test.
    """

    benchmark: str
    data: str
    name: str | None = None  # how results are named; the benchmark (and split) when unset
    split: str | None = None
    image_root: str | None = None  # llava-qa: the folder image paths are relative to
    limit: int | None = None
    protocol: str | None = None

    @property
    def label(self) -> str:
        return self.name or (f"{self.benchmark}-{self.split}" if self.split else self.benchmark)


@dataclass
class HiveRecipe:
    name: str
    output_dir: str
    model: HiveModelRecipe
    data: HiveDataRecipe
    seed: int = 0
    stage0: dict | None = None  # present: stage 0 pretrains the LLM on the text of stages 2 and 3 before HIVE is built
    stage1: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)
    stage3: dict = field(default_factory=dict)
    eval: list | None = None  # HiveEvalEntry per benchmark `hive ablate` scores (hive-shapes' own when unset)
    study: dict | None = None  # `hive ablate`'s section: fusions, seeds, ... (read by hive_vlm.ablation.settings)
    transfer: dict | None = None  # `hive transfer`'s section: variants, the LLM, ... (read by hive_vlm.transfer.settings)

    @property
    def stages(self) -> list[int]:
        """The recipe's stages in order: 0 (LLM pretraining) only when the recipe has a `stage0` section."""
        return [0, 1, 2, 3] if self.stage0 is not None else [1, 2, 3]

    def stage_arguments(self, stage: int, output_dir: str, **extra):
        """The stage's `TrainingArguments` subclass, built from the recipe (unknown keys raise naming the key)."""
        values = {"seed": self.seed, "report_to": "none", **(getattr(self, f"stage{stage}") or {}), **extra}
        config_class = STAGE_CONFIGS[stage]
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"stage{stage}: unknown key(s) {unknown}; {config_class.__name__} has no such field.")
        types = {f.name: f.type for f in dataclasses.fields(config_class)}
        for key, value in values.items():
            check_scalar(f"stage{stage}.{key}", value, types[key])
        try:
            return config_class(output_dir=output_dir, **values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"stage{stage}: {error}") from error


_SCALARS = (bool, int, float, str)


def check_scalar(where: str, value, annotation) -> None:
    """Raises naming `where` when `value` does not fit a plain bool/int/float/str field (others are left to the class)."""
    allowed = [t for t in (typing.get_args(annotation) or (annotation,)) if t is not type(None)]
    if value is None or not allowed or not all(t in _SCALARS for t in allowed):
        return
    fits = (
        (bool in allowed and isinstance(value, bool))
        or (int in allowed and isinstance(value, int) and not isinstance(value, bool))
        or (float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (str in allowed and isinstance(value, str))
    )
    if not fits:
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) and float in allowed else ""
        names = " or ".join(t.__name__ for t in allowed)
        raise ValueError(f"{where}: expected {names}, got {type(value).__name__} ({value!r}){hint}.")


def _build(cls, values, where: str):
    """Instantiates a recipe dataclass from a mapping, naming the offending key on unknown keys or wrong types."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}.")
    missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}.")
    kwargs = {}
    for name, value in values.items():
        expected = _TYPES[cls][name]
        if value is not None and not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join(t.__name__ for t in expected)
            raise ValueError(f"{where}.{name}: expected {names}, got {type(value).__name__} ({value!r}).")
        kwargs[name] = value
    return cls(**kwargs)


_TYPES = {
    HiveModelRecipe: {
        "vision_model": (str,), "vision_config": (dict,), "text_model": (str,), "text_config": (dict,),
        "hive": (dict,), "dtype": (str,),
    },
    HiveDataSource: {
        "source": (str,), "format": (str,), "image_root": (str,), "split": (str,), "streaming": (bool,),
        "strict": (bool,),
    },
    HiveDataRecipe: {
        "shapes": (dict,), "tokenizer": (str,), "max_length": (int,), "stage1": (dict,), "stage2": (dict,),
        "stage3": (dict,),
    },
    HiveRecipe: {
        "name": (str,), "output_dir": (str,), "model": (dict,), "data": (dict,), "seed": (int,), "stage0": (dict,), "stage1": (dict,),
        "stage2": (dict,), "stage3": (dict,), "eval": (list,), "study": (dict,), "transfer": (dict,),
    },
    HiveEvalEntry: {
        "benchmark": (str,), "data": (str,), "name": (str,), "split": (str,), "image_root": (str,), "limit": (int,),
        "protocol": (str,),
    },
}


def _check_hive_fields(model: HiveModelRecipe, where: str) -> None:
    """Unknown HiveConfig keys raise (HiveConfig keeps them silently); with both backbones given as configs, so do bad values."""
    known = {f.name for f in dataclasses.fields(HiveConfig)} - {"vision_config", "text_config"}
    unknown = sorted(set(model.hive) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; HiveConfig has no such field.")
    if model.vision_config is not None and model.text_config is not None:
        try:
            HiveConfig(vision_config=model.vision_config, text_config=model.text_config, **model.hive)
        except (ValueError, TypeError, StrictDataclassError) as error:
            raise ValueError(f"{where}: {' '.join(str(error).split())}") from error


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Applies `dotted.key=value` overrides (values parsed as YAML) to a recipe mapping."""
    values = copy.deepcopy(values)
    for override in overrides or []:
        if "=" not in override:
            raise ValueError(f"override {override!r} must look like key=value, e.g. stage2.max_steps=10.")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        target = values
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {override!r}: {part!r} is not a section.")
        target[parts[-1]] = yaml.safe_load(raw)
    return values


def parse_recipe(values: dict, where: str = "recipe") -> HiveRecipe:
    """Validates a recipe mapping into a `HiveRecipe`; every error names the offending key."""
    recipe = _build(HiveRecipe, values, where)
    recipe.model = _build(HiveModelRecipe, recipe.model, f"{where}.model")
    data = _build(HiveDataRecipe, recipe.data, f"{where}.data")
    for stage in (1, 2, 3):
        source = getattr(data, f"stage{stage}")
        if source is not None:
            source = _build(HiveDataSource, source, f"{where}.data.stage{stage}")
            if source.format not in DATA_FORMATS:
                raise ValueError(f"{where}.data.stage{stage}.format: {source.format!r} is not one of {DATA_FORMATS[:-1]}.")
            setattr(data, f"stage{stage}", source)
    recipe.data = data
    if recipe.eval is not None:
        recipe.eval = [_build(HiveEvalEntry, entry, f"{where}.eval[{index}]") for index, entry in enumerate(recipe.eval)]
        labels = [entry.label for entry in recipe.eval]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}.eval: two entries are named alike ({labels}); give each a distinct `name`.")
    model = recipe.model
    if (model.vision_model is None) == (model.vision_config is None):
        raise ValueError(f"{where}.model: give exactly one of vision_model (Hub id or folder) or vision_config.")
    if (model.text_model is None) == (model.text_config is None):
        raise ValueError(f"{where}.model: give exactly one of text_model (Hub id or folder) or text_config.")
    if model.text_model is None and data.tokenizer is None:
        raise ValueError(f"{where}.data.tokenizer: a text model built from a config has no tokenizer; set tokenizer: shapes.")
    _check_hive_fields(model, f"{where}.model.hive")
    # Fail at load time, not hours into a run. A GPU recipe read on a CPU-only machine is checked as if use_cpu
    # were set (its bf16 and the like are verified against the hardware when it runs).
    hardware = {} if torch.cuda.is_available() else {"use_cpu": True}
    for stage in (0, 1, 2, 3) if recipe.stage0 is not None else (1, 2, 3):
        recipe.stage_arguments(stage, "unused", **hardware)
    return recipe


def read_recipe_file(path) -> dict:
    """A recipe file's mapping, unvalidated; a missing file or broken YAML raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist; see recipes/ for examples.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(values, dict):
        raise ValueError(f"recipe {str(path)!r}: expected a mapping of sections, got {type(values).__name__}.")
    return values


def load_recipe(path, overrides: list[str] | None = None) -> HiveRecipe:
    """Reads a YAML recipe, applies `key=value` overrides and validates it."""
    return parse_recipe(apply_overrides(read_recipe_file(path), overrides or []), where=Path(path).name)
