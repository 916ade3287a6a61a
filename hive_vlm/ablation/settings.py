"""What `hive ablate` runs, read from a `hive train` recipe: its backbones, data, stages and evaluation, plus the
recipe's optional `study` section (the fusions, seeds and study-only settings).

    study:
      fusions: [hive-paired, hive-all-levels, single-level, shared-softmax, flat, qformer]
      seeds: [0, 1, 2]            # fusion initialisation and batch order; data and backbones are shared by all seeds
      match_params: true          # every fusion's stage-2 budget within 10% of hive-paired's (widths rescaled)
      train_llm: false            # true: the whole LLM trains in stage 3 too, at the fusion's learning rate
      pretrain_llm: false         # true: the LLM (but its embeddings and head) trains in stages 2 and 3, as the authors'
      benchmarks: null            # names of the recipe's `eval` entries to score; null: all of them
      fusion: {...}               # HiveFusionSettings, except what model.hive already sets
      eval: {checkpoints: 4, validation_limit: 64, batch_size: 32, limit: null, probe_epochs: 30, probe_limit: null}

The HIVE fusions take `cross_attention_layers`, `cross_attention_intermediate_size` and `gate_init` from `model.hive`.
Every fusion trains stages 2 and 3 through `hive train`'s own trainers (`HiveAlignmentTrainer`, `HiveFinetuneTrainer`)
with the recipe's stage sections as `hive train` reads them: schedule, warm-up, accumulation, clipping, LoRA and every
other key. A key a study cannot honour (`REFUSED_STAGE_KEYS`: quantization, FSDP, DeepSpeed, ...) is refused by name.

Example:
    >>> from hive_vlm.ablation.settings import load_study
    >>> recipe, study = load_study("recipes/tiny-shapes.yaml", quick=True)
    >>> study.fusions, study.seeds, study.stage3["max_steps"]
    (['hive-paired', 'hive-all-levels', 'single-level', 'shared-softmax', 'flat', 'qformer'], [0], 4)
"""

import copy
from dataclasses import dataclass, field
from pathlib import Path

from hive_vlm.eval.registry import benchmark_adapter
from hive_vlm.training.recipe import STAGE_CONFIGS, HiveRecipe, apply_overrides, check_scalar, parse_recipe, read_recipe_file
from modeling_hive.configuration_hive import SHARED_SOFTMAX_NORMS

from .fusions import FUSIONS, HiveFusionSettings


DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "ablation-shapes.yaml"
DEFAULT_SEEDS = [0, 1, 2]
EVAL_DEFAULTS = {"checkpoints": 4, "validation_limit": 64, "batch_size": 32, "limit": None, "probe_epochs": 30, "probe_limit": None}
FROM_MODEL_HIVE = ("cross_attention_layers", "cross_attention_intermediate_size", "gate_init")
# --quick: every fusion end to end in minutes on the recipe's own backbones; the numbers mean nothing.
QUICK = {
    "data": {"shapes": {"num_train": 48, "num_validation": 4, "num_test": 4, "num_test_compositional": 4}},
    "stage0": {"max_steps": 4, "per_device_train_batch_size": 16},
    "stage1": {"max_steps": 2, "per_device_train_batch_size": 16},
    "stage2": {"max_steps": 3, "per_device_train_batch_size": 4},
    "stage3": {"max_steps": 4, "per_device_train_batch_size": 4},
    "study": {"seeds": [0], "fusion": {"qformer_num_hidden_layers": 1, "qformer_num_query_tokens": 4},
              "eval": {"checkpoints": 2, "validation_limit": 4, "batch_size": 16, "limit": 4, "probe_epochs": 2, "probe_limit": 16}},
}  # fmt: skip


@dataclass
class HiveStudySettings:
    """A study: which fusions and seeds, and what every fusion trains the same way.

    Args:
        name (`str`): the recipe's name.
        fusions (`list[str]`): fusions to compare, from `FUSIONS`.
        seeds (`list[int]`): seeds (fusion initialisation and batch order).
        match_params (`bool`): widen or narrow each fusion until its stage-2 budget is within 10% of hive-paired's
            (the default; shared-softmax, which has no width, keeps its own budget and the report says so).
        benchmarks (`list[str]`, *optional*): the recipe's evaluation entries to score (all when unset).
        fusion (`HiveFusionSettings`): the fusions' shapes.
        stage2, stage3 (`dict`): the recipe's stage settings (`stage_values`), which `stage_arguments` turns into the
            stage's `TrainingArguments`; `train_llm` and `pretrain_llm` are written into them.
        eval (`dict`): `EVAL_DEFAULTS`' keys.
        train_llm (`bool`): the whole LLM trains in stage 3 as well, at the fusion's learning rate (`stage3.train_llm`
            for every fusion; `stage3.lora_r` gives every fusion's LLM LoRA adapters instead).
        pretrain_llm (`bool`): the LLM trains in stages 2 and 3, all of it but its input embeddings and output head,
            at the fusion's learning rate: the authors' setting (their stages 2 and 3 train `mm_language_model`, for
            HIVE and for SA alike; `train_llm: true, train_llm_embeddings: false` in both stages). False: the LLM stays
            frozen in stage 2.
        default_study (`bool`): the recipe had no `study` section, so the default fusions and seeds run.
    """

    name: str
    fusions: list = field(default_factory=lambda: list(FUSIONS))
    seeds: list = field(default_factory=lambda: list(DEFAULT_SEEDS))
    match_params: bool = True
    benchmarks: list | None = None
    fusion: HiveFusionSettings = field(default_factory=HiveFusionSettings)
    stage2: dict = field(default_factory=dict)
    stage3: dict = field(default_factory=dict)
    eval: dict = field(default_factory=lambda: dict(EVAL_DEFAULTS))
    train_llm: bool = False
    pretrain_llm: bool = False
    default_study: bool = False


def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


# What a study sets in every stage's arguments itself: where it logs and saves (a loss and a learning rate at every
# step; no checkpoints, a run's result.json is what a study keeps and resumes from), the seed (per run and stage) and
# one data process (the collator records every batch's hash). They change what is written, not how a stage trains.
STUDY_ARGUMENTS = {"save_strategy": "no", "logging_strategy": "steps", "logging_steps": 1, "logging_first_step": False,
                   "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0}  # fmt: skip
# Stage keys `hive train` honours and a study cannot, each with the reason (refused when set to anything but off).
REFUSED_STAGE_KEYS = {
    "quantization": "a study compares its fusions in full precision",
    "fsdp": "every run of a study trains in one process", "fsdp_config": "every run of a study trains in one process",
    "deepspeed": "every run of a study trains in one process", "push_to_hub": "a study uploads nothing",
    "resume_from_checkpoint": "a study keeps finished runs (result.json), not checkpoints",
    "auto_find_batch_size": "every fusion must see the same batches, and it would halve one fusion's batch alone",
}  # fmt: skip
# model.hive keys each fusion sets for itself (the study compares them); any other key would be ignored, so is refused.
SET_BY_FUSION = ("hierarchy_mode", "cross_attention_mode", "shared_softmax_norm")
# Defaults written into a study's stage settings, so its report and result.json show them.
SHOWN_STAGE_KEYS = ("max_steps", "per_device_train_batch_size", "learning_rate", "train_vision", "train_llm", "train_llm_embeddings")


def stage_values(recipe: HiveRecipe, stage: int, where: str = "recipe") -> dict:
    """The recipe's stage `stage` settings as a study trains them: every key `hive train` honours, through the same
    `TrainingArguments` class and stage trainer (`stage_arguments`); the keys a study cannot honour
    (`REFUSED_STAGE_KEYS`) are refused by name. The shown defaults are filled in."""
    values = dict(getattr(recipe, f"stage{stage}") or {})
    refused = sorted(key for key in values if key in REFUSED_STAGE_KEYS and values[key])
    if refused:
        reasons = "; ".join(f"{key}: {REFUSED_STAGE_KEYS[key]}" for key in refused)
        raise ValueError(f"{where}.stage{stage}: a study cannot honour {refused} ({reasons}); drop them from the recipe a "
                         "study reads, or train it with `hive train`.")  # fmt: skip
    try:
        args = recipe.stage_arguments(stage, "unused", use_cpu=True)  # every key checked as `hive train` checks it
    except ValueError as error:
        raise ValueError(f"{where}.{error}") from error
    if args.max_steps < 1 or args.per_device_train_batch_size < 1:
        raise ValueError(f"{where}.stage{stage}: a study needs max_steps and per_device_train_batch_size of at least 1.")
    shown = SHOWN_STAGE_KEYS + (("lora_r", "vision_learning_rate") if stage == 3 else ())
    return {**{key: getattr(args, key) for key in shown}, **values}


def check_stage_arguments(stage: int, values: dict, where: str) -> None:
    """Builds a study stage's arguments once, before anything trains: a recipe key that cannot go with what a study sets
    itself (`STUDY_ARGUMENTS`) fails here, naming the stage, not in the middle of a run."""
    try:
        stage_arguments(stage, values, "unused", seed=0)
    except ValueError as error:
        raise ValueError(f"{where}.stage{stage}: {error} (a study sets {STUDY_ARGUMENTS} itself)") from error


def stage_arguments(stage: int, values: dict, output_dir, seed: int):
    """The `TrainingArguments` of a study's stage (`HiveAlignmentConfig` or `HiveFinetuneConfig`, as `hive train`
    builds them) from `stage_values`, with the study's own `STUDY_ARGUMENTS` and `seed` (model seed and batch order)."""
    return STAGE_CONFIGS[stage](output_dir=str(output_dir), **{**values, **STUDY_ARGUMENTS, "seed": seed, "data_seed": seed})


SHAPES_VIEWS = {"mme": None, "scienceqa": "lmms-eval", "okvqa": None}  # the lowercasing shapes tokenizer writes "a", not "A"


def uses_shapes(recipe: HiveRecipe) -> bool:
    """Whether stage 2 or 3 trains on hive-shapes (then a study without `eval` is scored on it)."""
    return any(source is None or "shapes" in (source.source, source.format) for source in (recipe.data.stage2, recipe.data.stage3))


def evaluation_entries(recipe: HiveRecipe, benchmarks: list | None, where: str = "recipe") -> list[dict]:
    """The evaluations a study scores, `data: shapes` left to resolve: the recipe's `eval` entries, or on a hive-shapes
    recipe without one its test and compositional test splits and the MME, ScienceQA and OK-VQA layouts of its test
    split; then only those `benchmarks` names (all when None). Errors name the key."""
    if recipe.eval is None:
        if not uses_shapes(recipe):
            raise ValueError(f"{where}: the recipe has no `eval` section: name what the study scores, e.g. eval: [{{benchmark: "
                             "llava-qa, data: test.json, image_root: images/}] (a LLaVA-format file whose answers are the references).")  # fmt: skip
        entries = [{"label": split, "benchmark": "hive-shapes", "data": "shapes", "split": split, "image_root": None, "limit": None,
                    "protocol": None} for split in ("test", "test_compositional")]  # fmt: skip
        entries += [{"label": name, "benchmark": name, "data": "shapes", "split": None, "image_root": None, "limit": None,
                     "protocol": protocol} for name, protocol in SHAPES_VIEWS.items()]  # fmt: skip
    else:
        entries = [{"label": e.label, "benchmark": e.benchmark, "data": e.data, "split": e.split, "image_root": e.image_root,
                    "limit": e.limit, "protocol": e.protocol} for e in recipe.eval]  # fmt: skip
    for index, entry in enumerate(entries):
        if entry["data"] == "shapes" and entry["benchmark"] not in ("hive-shapes", *SHAPES_VIEWS):
            raise ValueError(f"{where}.eval[{index}]: {entry['benchmark']} has no hive-shapes layout; `data: shapes` serves "
                             "hive-shapes, mme, scienceqa and okvqa.")  # fmt: skip
    if benchmarks is not None:
        labels = [entry["label"] for entry in entries]
        missing = sorted(set(benchmarks) - set(labels))
        if not benchmarks or missing:
            raise ValueError(f"{where}.study.benchmarks: {benchmarks} must name some of the recipe's evaluations, {labels}.")
        entries = [entry for entry in entries if entry["label"] in benchmarks]
    return entries


def check_evaluations(recipe: HiveRecipe, where: str) -> None:
    """Each `eval` entry names a `hive eval` adapter and one of its protocols: checked before anything trains."""
    for index, entry in enumerate(recipe.eval or []):
        try:
            adapter = benchmark_adapter(entry.benchmark, image_root=entry.image_root)
        except ValueError as error:
            raise ValueError(f"{where}.eval[{index}].benchmark: {error}") from error
        if entry.protocol is not None and entry.protocol not in adapter.protocols:
            raise ValueError(f"{where}.eval[{index}].protocol: {entry.protocol!r} is not one of {entry.benchmark}'s {list(adapter.protocols)}.")


def parse_study(recipe: HiveRecipe, where: str = "recipe") -> HiveStudySettings:
    """The study of a validated recipe: its `study` section checked (unknown keys and wrong kinds raise, naming the
    key) and filled with defaults."""
    values = recipe.study
    default_study = values is None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}.study: expected a mapping, got {type(values).__name__}.")
    allowed = {"fusions", "seeds", "match_params", "train_llm", "pretrain_llm", "benchmarks", "fusion", "eval"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{where}.study: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
    fusions = list(values.get("fusions") or FUSIONS)
    wrong = [name for name in fusions if name not in FUSIONS]
    if wrong or len(set(fusions)) != len(fusions):
        raise ValueError(f"{where}.study.fusions: {fusions} must be distinct names from {list(FUSIONS)}.")
    seeds = values.get("seeds", DEFAULT_SEEDS)
    seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}.study.seeds: give a number of seeds or a list of integers, got {values.get('seeds')!r}.")
    given = values.get("eval") or {}
    extra = sorted(set(given) - set(EVAL_DEFAULTS))
    if extra:
        raise ValueError(f"{where}.study.eval: unknown key(s) {extra}; allowed: {sorted(EVAL_DEFAULTS)}.")
    for key, value in given.items():
        check_scalar(f"{where}.study.eval.{key}", value, int)
    evaluation = {**EVAL_DEFAULTS, **given}
    if evaluation["checkpoints"] < 1:
        raise ValueError(f"{where}.study.eval.checkpoints must be at least 1 (the end of stage 3).")
    fusion_values = values.get("fusion") or {}
    known = set(HiveFusionSettings.__dataclass_fields__) - set(FROM_MODEL_HIVE) - {"intermediate_sizes"}
    extra = sorted(set(fusion_values) - known)
    if extra:
        hint = " (the HIVE fusions take them from model.hive)" if set(extra) & set(FROM_MODEL_HIVE) else ""
        raise ValueError(f"{where}.study.fusion: unknown key(s) {extra}{hint}; allowed: {sorted(known)}.")
    from_hive = {key: recipe.model.hive[key] for key in FROM_MODEL_HIVE if key in recipe.model.hive}
    if fusion_values.get("shared_softmax_norm", "image_keys") not in SHARED_SOFTMAX_NORMS:
        raise ValueError(f"{where}.study.fusion.shared_softmax_norm must be one of {SHARED_SOFTMAX_NORMS}, got "
                         f"{fusion_values['shared_softmax_norm']!r}.")  # fmt: skip
    match_params = values.get("match_params", True)
    check_scalar(f"{where}.study.match_params", match_params, bool)
    train_llm, pretrain_llm = values.get("train_llm", False), values.get("pretrain_llm", False)
    check_scalar(f"{where}.study.train_llm", train_llm, bool)
    check_scalar(f"{where}.study.pretrain_llm", pretrain_llm, bool)
    for key, value in (("train_llm", train_llm), ("pretrain_llm", pretrain_llm)):
        if value and recipe.stage3.get("lora_r"):
            raise ValueError(f"{where}.study.{key} trains the whole LLM; drop stage3.lora_r (LoRA adapters) or {key}.")
    if train_llm and pretrain_llm:
        raise ValueError(f"{where}.study: pretrain_llm already trains the LLM in stage 3; drop train_llm (the whole LLM, stage 3 "
                         "only) or pretrain_llm (all but its embeddings and head, stages 2 and 3).")  # fmt: skip
    benchmarks = values.get("benchmarks")
    if benchmarks is not None and (not isinstance(benchmarks, list) or not all(isinstance(b, str) for b in benchmarks)):
        raise ValueError(f"{where}.study.benchmarks: give a list of the recipe's eval entry names, got {benchmarks!r}.")
    check_evaluations(recipe, where)
    evaluation_entries(recipe, benchmarks, where)
    for stage in (2, 3):
        source = getattr(recipe.data, f"stage{stage}")
        if source is not None and source.streaming:
            raise ValueError(f"{where}.data.stage{stage}.streaming: a study draws the same seeded batches for every fusion "
                             "and needs indexable data; set streaming: false.")  # fmt: skip
    # study.pretrain_llm and study.train_llm are the stages' own train_llm settings, said once for every fusion.
    llm = {"train_llm": True, "train_llm_embeddings": False} if pretrain_llm else {}
    stage2 = {**stage_values(recipe, 2, where), **llm}
    stage3 = {**stage_values(recipe, 3, where), **llm, **({"train_llm": True} if train_llm else {})}
    for stage, said in ((2, llm), (3, {**llm, **({"train_llm": True} if train_llm else {})})):
        clash = sorted(key for key in said if key in getattr(recipe, f"stage{stage}") and getattr(recipe, f"stage{stage}")[key] != said[key])
        if clash:
            key = "pretrain_llm" if pretrain_llm else "train_llm"
            raise ValueError(f"{where}.study.{key} sets stage{stage}.{clash[0]} to {said[clash[0]]}, and the recipe's stage{stage} "
                             f"says {getattr(recipe, f'stage{stage}')[clash[0]]}; drop one of them.")  # fmt: skip
        check_stage_arguments(stage, stage2 if stage == 2 else stage3, where)
    ignored = sorted(set(recipe.model.hive) - set(FROM_MODEL_HIVE) - set(SET_BY_FUSION))
    if ignored:
        raise ValueError(f"{where}.model.hive: a study's fusions take {list(FROM_MODEL_HIVE)} from it and set {list(SET_BY_FUSION)} "
                         f"themselves; {ignored} would be ignored. Drop them from the recipe a study reads.")  # fmt: skip
    if recipe.model.dtype not in (None, "float32"):
        raise ValueError(f"{where}.model.dtype: a study builds every fusion in float32, and the recipe asks for {recipe.model.dtype}; "
                         "drop it (mixed precision goes through the stages' bf16 or fp16 keys, which a study honours).")  # fmt: skip
    return HiveStudySettings(name=recipe.name, fusions=fusions, seeds=seeds, match_params=bool(match_params), benchmarks=benchmarks,
                             fusion=HiveFusionSettings(**from_hive, **fusion_values), stage2=stage2, stage3=stage3, eval=evaluation,
                             train_llm=bool(train_llm), pretrain_llm=bool(pretrain_llm), default_study=default_study)  # fmt: skip


def load_study(path=None, quick: bool = False, overrides: list[str] | None = None) -> tuple[HiveRecipe, HiveStudySettings]:
    """Reads a `hive train` recipe (the default study's when `path` is None), applies `--quick` and `key=value`
    overrides, and returns the validated recipe and its study."""
    path = Path(path or DEFAULT_RECIPE)
    return study_from_values(read_recipe_file(path), quick, overrides, where=path.name)


def study_from_values(values: dict, quick: bool = False, overrides: list[str] | None = None, where: str = "recipe"):
    """`load_study` on a recipe mapping; returns `(recipe, study)`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}.")
    default_study = values.get("study") is None
    if quick:
        quick_values = copy.deepcopy(QUICK)
        if values.get("stage0") is None:
            del quick_values["stage0"]  # a recipe without stage 0 keeps its LLM as it is
        values = _merge(values, quick_values)
    recipe = parse_recipe(apply_overrides(values, overrides or []), where=where)
    study = parse_study(recipe, where=where)
    study.default_study = default_study and not any(o.split("=", 1)[0].startswith("study") for o in overrides or [])
    return recipe, study
