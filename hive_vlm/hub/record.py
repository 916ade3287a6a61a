"""What a `hive train` run records about itself: its training record (`hive_training.json`) and, per stage folder, the
step count, last loss and settings the model card shows."""

import json
import logging
import re
from pathlib import Path

from hive_vlm.files import write_atomically


logger = logging.getLogger(__name__)
PROVENANCE_NAME = "hive_training.json"  # written by `hive train` next to the stage folders
STAGES = {
    0: "LLM pretraining (causal language modelling)",
    1: "Vision-encoder pretraining (masked image modelling)",
    2: "Hierarchical alignment",
    3: "Joint fine-tuning",
}
_HIDDEN_SETTINGS = re.compile(r"token|^push_to_hub$|^hub_|^output_dir$")


def read_provenance(model_dir: Path) -> dict:
    """`hive_training.json` from the folder or its run folder (the parent of `final/`); `{}` when there is none."""
    for folder in (model_dir, model_dir.parent):
        path = folder / PROVENANCE_NAME
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON ({error}); delete it or rerun `hive train`.") from error
    return {}


def write_training_record(run_dir, recipe) -> Path:
    """
    Write `hive_training.json` in a run folder: the recipe's name, the backbones' sources, the training data and each
    stage's recipe settings (keys naming a token are left out). `hive card` reads it from `<run>/final`.

    Args:
        run_dir (`str` or `os.PathLike`): the run's output folder (holding `stage1/`, ..., `final/`).
        recipe (`hive_vlm.training.recipe.HiveRecipe`): the recipe the run used.
    """
    sources = (recipe.data.stage1, recipe.data.stage2, recipe.data.stage3)
    record = {
        "recipe": recipe.name,
        "base_model": {"vision": recipe.model.vision_model, "text": recipe.model.text_model},
        "datasets": sorted({source.source for source in sources if source is not None}),
        "stages": {
            str(stage): {key: value for key, value in getattr(recipe, f"stage{stage}").items() if "token" not in key.lower()}
            for stage in STAGES if getattr(recipe, f"stage{stage}") is not None
        },
    }
    path = Path(run_dir) / PROVENANCE_NAME
    write_atomically(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _last_trainer_state(stage_dir: Path) -> dict | None:
    """`trainer_state.json` of the stage's latest checkpoint."""
    states = []
    for folder in stage_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and (folder / "trainer_state.json").is_file():
            states.append((int(match.group(1)), folder / "trainer_state.json"))
    if not states:
        return None
    try:
        return json.loads(max(states)[1].read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; the card leaves that stage's step count out.", max(states)[1])
        return None


def _trained_components(stage: int, settings: dict | None) -> str:
    if stage == 0:
        return "LLM"
    if stage == 1:
        return "vision encoder"
    if settings is None:
        return "cross-attention and projectors"
    from hive_vlm.training.recipe import STAGE_CONFIGS  # on demand: it loads torch, which hive card and push skip

    defaults = {field.name: field.default for field in STAGE_CONFIGS[stage].__dataclass_fields__.values()}
    value = {**defaults, **settings}.get
    parts = (["vision encoder"] if value("train_vision") else []) + ["cross-attention", "projectors"]
    if stage == 3 and (value("lora_r") or 0) > 0:
        return ", ".join(parts) + f", LLM through LoRA (r={value('lora_r')})"
    return ", ".join(parts) + " (LLM frozen)"


def training_stages(model_dir: Path, provenance: dict) -> list[dict]:
    """One row per stage found next to `model_dir` (`<run>/stageN/`), with its step count, last loss and settings."""
    run_dir = model_dir.parent
    recipe_stages = provenance.get("stages") or {}
    rows = []
    for number, title in STAGES.items():
        stage_dir = run_dir / f"stage{number}"
        if not stage_dir.is_dir():
            continue
        settings = recipe_stages.get(str(number))
        state = _last_trainer_state(stage_dir)
        steps, loss = "unknown (no checkpoint)", "n/a"
        if state is not None:
            steps = f"{state.get('global_step')} of {state.get('max_steps')}"
            losses = [entry["loss"] for entry in state.get("log_history", []) if isinstance(entry.get("loss"), (int, float))]
            loss = f"{losses[-1]:.4g}" if losses else "n/a"
        if not (stage_dir / "model").is_dir():
            steps += " (unfinished)"
        shown = {key: value for key, value in sorted((settings or {}).items()) if not _HIDDEN_SETTINGS.search(key)}
        rows.append(
            {
                "number": number,
                "title": title,
                "trains": _trained_components(number, settings),
                "steps": steps,
                "loss": loss,
                "settings": ", ".join(f"`{key}={value}`" for key, value in shown.items()) or "not recorded",
            }
        )
    return rows
