"""What `hive transfer` runs, read from a `hive train` recipe: its `study` section says how the encoders are pre-trained
(the fusions `hive ablate` compares), and its optional `transfer` section how each encoder is then carried into an
ordinary LLaVA pipeline, the paper's own protocol.

    transfer:
      variants: [hive-paired, hive-all-levels, single-level, shared-softmax, flat, qformer, mim-only, none]
      seeds: [0, 1, 2]            # pre-training seed k is transferred with seed k
      text_model: null            # the transfer LLM (Hub id or folder); null: text_config, or the recipe's own LLM
      text_config: null           # a transfer LLM built from a config (vocabulary: the recipe's tokenizer), pretrained
                                  # by the recipe's stage 0 when it has one
      vision_feature_layer: -2    # the encoder layer LLaVA projects (LLaVA-1.5: the penultimate)
      train_vision: false         # the encoder stays frozen in transfer unless asked otherwise
      train_llm: true             # LLaVA's fine-tuning trains the LLM
      stage2: {}                  # projector pretraining: over the recipe's stage2 keys (max_steps, learning_rate, ...)
      stage3: {}                  # fine-tuning: over the recipe's stage3 keys (its LoRA settings are not used)

Variants: the six fusions of `hive ablate` (each pre-trains the encoder through the proxy LLM, stages 2 and 3 of
the recipe), `mim-only` (the encoder after stage 1 alone) and `none` (the encoder as the recipe builds or loads it).

Example:
    >>> from hive_vlm.transfer.settings import load_transfer
    >>> recipe, study, transfer = load_transfer("recipes/tiny-shapes.yaml", quick=True)
    >>> transfer.variants[-2:], transfer.seeds
    (['mim-only', 'none'], [0])
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hive_vlm.ablation.fusions import FUSIONS
from hive_vlm.ablation.settings import DEFAULT_RECIPE, HiveStudySettings, check_stage_arguments, stage_values, study_from_values
from hive_vlm.training.recipe import HiveRecipe, check_scalar, read_recipe_file


VARIANTS = (*FUSIONS, "mim-only", "none")
# What the transfer itself decides in each stage, whatever the recipe's stage sections say: projector pretraining
# trains the projector alone; fine-tuning trains what `transfer.train_vision` and `transfer.train_llm` say, the whole
# LLM as LLaVA's fine-tuning trains it (so the recipe's LoRA settings are not the transfer's).
TRANSFER_STAGE = {2: lambda t: {"train_vision": False, "train_llm": False},
                  3: lambda t: {"train_vision": t.train_vision, "train_llm": t.train_llm, "train_llm_embeddings": True, "lora_r": 0}}  # fmt: skip


@dataclass
class HiveTransferSettings:
    """How every pre-trained encoder is transferred: the same LLaVA, LLM, data, steps and seeds for each.

    Args:
        variants (`list[str]`): pre-training variants, from `VARIANTS`.
        seeds (`list[int]`): pre-training and transfer seeds.
        text_model, text_config: the transfer LLM (the recipe's own when both are unset).
        vision_feature_layer (`int`): the encoder layer LLaVA's projector reads.
        train_vision, train_llm (`bool`): what trains in the fine-tuning stage besides the projector.
        stage2, stage3 (`dict`): the stage settings (`hive_vlm.ablation.settings.stage_values`) of projector
            pretraining and fine-tuning: the recipe's, `transfer.stage2`/`stage3` over them, and `TRANSFER_STAGE`.
        default_transfer (`bool`): the recipe had no `transfer` section.
    """

    variants: list = field(default_factory=lambda: list(VARIANTS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    text_model: str | None = None
    text_config: dict | None = None
    vision_feature_layer: int = -2
    train_vision: bool = False
    train_llm: bool = True
    stage2: dict = field(default_factory=dict)
    stage3: dict = field(default_factory=dict)
    default_transfer: bool = False


def parse_transfer(recipe: HiveRecipe, study: HiveStudySettings, where: str = "recipe") -> HiveTransferSettings:
    """The transfer of a validated recipe: its `transfer` section checked (unknown keys and wrong kinds raise, naming
    the key) and filled with defaults (the study's seeds; the recipe's stage 2 and 3 settings)."""
    values = recipe.transfer
    default_transfer = values is None
    values = dict(values or {})
    allowed = {f.name for f in dataclasses.fields(HiveTransferSettings)} - {"default_transfer"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{where}.transfer: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
    variants = list(values.get("variants") or VARIANTS)
    if any(v not in VARIANTS for v in variants) or len(set(variants)) != len(variants):
        raise ValueError(f"{where}.transfer.variants: {variants} must be distinct names from {list(VARIANTS)}.")
    seeds = values.get("seeds", study.seeds)
    seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}.transfer.seeds: give a number of seeds or a list of integers, got {values.get('seeds')!r}.")
    if values.get("text_model") is not None and values.get("text_config") is not None:
        raise ValueError(f"{where}.transfer: give text_model or text_config for the transfer LLM, not both.")
    for key, kind in (("text_model", str), ("vision_feature_layer", int), ("train_vision", bool), ("train_llm", bool)):
        check_scalar(f"{where}.transfer.{key}", values.get(key), kind)
    if values.get("text_config") is not None and not isinstance(values["text_config"], dict):
        raise ValueError(f"{where}.transfer.text_config: expected a mapping, got {type(values['text_config']).__name__}.")
    kept = {key: values[key] for key in ("text_model", "text_config", "vision_feature_layer", "train_vision", "train_llm") if key in values}
    transfer = HiveTransferSettings(variants=variants, seeds=seeds, default_transfer=default_transfer, **kept)
    for stage in (2, 3):
        given = values.get(f"stage{stage}") or {}
        if not isinstance(given, dict):
            raise ValueError(f"{where}.transfer.stage{stage}: expected a mapping of the recipe's stage{stage} keys, got {given!r}.")
        decided = TRANSFER_STAGE[stage](transfer)
        clash = sorted((set(given) & set(decided)) | {key for key in given if key.startswith("lora_")})
        if clash:
            raise ValueError(f"{where}.transfer.stage{stage}: {clash} are the transfer's own (projector pretraining trains the "
                             "projector alone; fine-tuning trains what transfer.train_vision and transfer.train_llm say).")  # fmt: skip
        recipe_stage = {key: value for key, value in getattr(recipe, f"stage{stage}").items() if not key.startswith("lora_")}
        merged = dataclasses.replace(recipe, **{f"stage{stage}": {**recipe_stage, **given, **decided}})
        setattr(transfer, f"stage{stage}", stage_values(merged, stage, f"{where}.transfer"))
        check_stage_arguments(stage, getattr(transfer, f"stage{stage}"), f"{where}.transfer")
    return transfer


def flat_readout(recipe: HiveRecipe, transfer: HiveTransferSettings, where: str = "recipe") -> int:
    """The encoder layer `flat` pre-trains on: the one transfer reads (`transfer.vision_feature_layer`), as the
    authors' SA baseline reads layer -2 in every stage; otherwise flat's directly trained readout would be thrown away
    at transfer. A recipe that sets `study.fusion.flat_vision_feature_layer` to another layer is refused."""
    given = ((recipe.study or {}).get("fusion") or {}).get("flat_vision_feature_layer")
    if given is not None and given != transfer.vision_feature_layer:
        raise ValueError(f"{where}: study.fusion.flat_vision_feature_layer ({given}) and transfer.vision_feature_layer "
                         f"({transfer.vision_feature_layer}) differ; flat must pre-train on the layer transfer reads. Set "
                         "one of them, or both to the same layer.")  # fmt: skip
    return transfer.vision_feature_layer


def load_transfer(path=None, quick: bool = False, overrides: list[str] | None = None):
    """Reads a `hive train` recipe, applies `--quick` and `key=value` overrides; returns `(recipe, study, transfer)`."""
    path = Path(path or DEFAULT_RECIPE)
    values = read_recipe_file(path)
    if quick and values.get("transfer") is not None:
        values = {**values, "transfer": {**values["transfer"], "seeds": [0]}}
    recipe, study = study_from_values(values, quick, overrides, where=path.name)
    transfer = parse_transfer(recipe, study, where=path.name)
    study.fusion.flat_vision_feature_layer = flat_readout(recipe, transfer, where=path.name)
    if quick:
        transfer.stage2.update(max_steps=3, per_device_train_batch_size=4)
        transfer.stage3.update(max_steps=4, per_device_train_batch_size=4)
    return recipe, study, transfer
