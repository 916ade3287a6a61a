"""The model card (README.md) of a saved HIVE folder, with its evaluation results as a model-index (`hive card`'s
library). The card is built by `modeling_hive.card_hive.hive_model_card`, the builder the processor's card comes from;
this module adds what a saved folder and its run say."""

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard
from safetensors import safe_open

from hive_vlm.files import write_atomically
from modeling_hive.card_hive import CARD_NAME, hive_model_card

from .record import read_provenance, training_stages


logger = logging.getLogger(__name__)

TEMPLATE_NAME = "hive_template.md"
DEFAULT_LICENSE = "other"

# benchmark -> (task type, Hub dataset id, display name, dataset config) for the benchmarks `hive eval` runs.
BENCHMARKS = {
    "mme": ("visual-question-answering", "lmms-lab/MME", "MME", None),
    "gqa": ("visual-question-answering", "lmms-lab/GQA", "GQA (testdev-balanced)", "testdev_balanced_instructions"),
    "okvqa": ("visual-question-answering", "lmms-lab/OK-VQA", "OK-VQA", None),
    "scienceqa": ("visual-question-answering", "lmms-lab/ScienceQA", "ScienceQA-IMG", "ScienceQA-IMG"),
    "hive-shapes": ("visual-question-answering", "hive-shapes", "hive-shapes", None),
    "classification": ("zero-shot-image-classification", None, None, None),
    "classification-with-labels": ("zero-shot-image-classification", None, None, None),
    "linear-probe": ("image-classification", None, None, None),
}
TASK_NAMES = {
    "visual-question-answering": "Visual Question Answering",
    "zero-shot-image-classification": "Zero-Shot Image Classification",
    "image-classification": "Image Classification (linear probe)",
}
HIERARCHY_DESCRIPTIONS = {
    "paired": "each cross-attention block attends to its own vision layer",
    "all_levels": "each cross-attention block attends to every selected vision layer, tagged by a level embedding",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]$")


def template_path() -> Path:
    """The template of the card's model, training and evaluation sections: shipped in the installed package
    (`hive_vlm/model_cards/`), or the repository's `model_cards/`."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "model_cards", package.parent / "model_cards"):
        if (folder / TEMPLATE_NAME).is_file():
            return folder / TEMPLATE_NAME
    raise FileNotFoundError(
        f"The HIVE card template {TEMPLATE_NAME} is missing from {package / 'model_cards'} and "
        f"{package.parent / 'model_cards'}; reinstall hive-vlm."
    )


def is_hub_id(value) -> bool:
    """Whether `value` reads as a Hub repository id (`org/name`) rather than a local path."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and not os.path.exists(value)


# --- evaluation results ------------------------------------------------------------------------------------------


def load_results(path) -> dict:
    """Reads one results JSON written by `hive eval`, checking the fields the card needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist; write it with `hive eval --out`.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {path} is not valid JSON: {error}") from error
    if not isinstance(results, dict):
        raise ValueError(f"results file {path}: expected a JSON object as written by `hive eval`.")
    for key, kind in (("benchmark", str), ("protocol", str), ("scores", dict)):
        if not isinstance(results.get(key), kind):
            raise ValueError(f"results file {path}: field {key!r} must be a {kind.__name__}; is it a `hive eval` results file?")
    return results


def eval_results_from(results: dict, where: str = "results") -> list[EvalResult]:
    """
    The model-index entries of one `hive eval` results dict: one `EvalResult` per top-level numeric score.

    Nested scores (MME's `per_category`) stay in the results file; a missing score (`None`) is left out.

    Args:
        results (`dict`): the results, as `hive_vlm.eval.runner.evaluate_benchmark` returns them.
        where (`str`): names the results in error messages.

    Example:
        >>> entries = eval_results_from({"benchmark": "gqa", "protocol": "official", "split": "testdev",
        ...                              "num_examples": 12578, "limit": None, "scores": {"accuracy": 61.2}})
        >>> entries[0].dataset_type, entries[0].metric_type, entries[0].metric_value
        ('lmms-lab/GQA', 'accuracy', 61.2)
    """
    benchmark = results["benchmark"]
    task_type, dataset_type, dataset_name, dataset_config = BENCHMARKS.get(benchmark, ("visual-question-answering", None, None, None))
    data = results.get("data")
    if dataset_type is None:
        dataset_type = data if is_hub_id(data) else benchmark
    if dataset_name is None:
        dataset_name = f"{benchmark} ({Path(data).name})" if isinstance(data, str) and data else benchmark
    split = results.get("split") or results.get("test_split")
    num_examples = results.get("num_examples", results.get("num_test"))
    metric_args = {"num_examples": num_examples}
    if results.get("limit") is not None:
        metric_args["limit"] = results["limit"]
    entries = []
    for metric, value in results["scores"].items():
        if value is None or isinstance(value, dict):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: score {metric!r} must be a finite number, got {value!r}.")
        entries.append(
            EvalResult(
                task_type=task_type,
                task_name=TASK_NAMES.get(task_type),
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_config=dataset_config,
                dataset_split=split,
                metric_type=metric,
                metric_name=f"{metric} ({results['protocol']})",
                metric_config=results["protocol"],
                metric_value=float(value),
                metric_args=metric_args,
            )
        )
    if not entries:
        raise ValueError(f"{where}: no numeric score in {sorted(results['scores'])}.")
    return entries


def _result_key(result: EvalResult) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type, result.metric_config)


def merge_eval_results(kept: list[EvalResult], new: list[EvalResult]) -> list[EvalResult]:
    """`kept` with every entry measuring the same thing as one of `new` replaced by it (order kept, new ones last)."""
    merged = {_result_key(result): result for result in kept}
    for result in new:
        merged[_result_key(result)] = result
    return list(merged.values())


# --- what the folder and its run say ----------------------------------------------------------------------------


def base_models(config: dict, provenance: dict) -> dict[str, str | None]:
    """Hub ids of both backbones: `_name_or_path` of each sub-config when it is a Hub id, else the training record."""
    recorded = provenance.get("base_model") or {}
    found = {}
    for role, key in (("vision", "vision_config"), ("text", "text_config")):
        candidates = [(config.get(key) or {}).get("_name_or_path"), recorded.get(role)]
        found[role] = next((candidate for candidate in candidates if is_hub_id(candidate)), None)
    return found


def count_parameters(model_dir: Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers (no weights are loaded)."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    if not files:
        return None
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                total += math.prod(weights.get_slice(name).get_shape())
    return total


def _human(count: int | None) -> str:
    if count is None:
        return "unknown (no safetensors weights in the folder)"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit} ({count:,})"
    return f"{count:,}"


def _backbone(sub_config: dict, hub_id: str | None) -> dict:
    depth = sub_config.get("num_hidden_layers", sub_config.get("n_layer"))
    width = sub_config.get("hidden_size", sub_config.get("n_embd"))
    description = f"`{sub_config.get('model_type', 'unknown')}`, {depth} layers, width {width}"
    if hub_id:
        description += f", from [`{hub_id}`](https://huggingface.co/{hub_id})"
    return {"description": description}


# --- the card ------------------------------------------------------------------------------------------------------


def _previous_card(card_path: Path):
    if not card_path.is_file():
        return None
    try:
        return ModelCard.load(card_path, ignore_metadata_errors=True)
    except Exception as error:  # a hand-edited card that no longer parses is replaced, not fatal
        logger.warning("the existing %s does not parse (%s); it is replaced without keeping its results.", card_path, error)
        return None


def build_model_card(
    model_dir,
    results=(),
    *,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    base_model: list[str] | None = None,
    keep_results: bool = True,
    allow_other_model: bool = False,
) -> ModelCard:
    """
    The model card of a saved HIVE folder, built by `modeling_hive.card_hive.hive_model_card` with its model,
    training and evaluation sections rendered from `model_cards/hive_template.md`.

    The metadata carries both backbones as `base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`,
    `license` and a `model-index` of the evaluation results. When the folder already has a HIVE card, its results,
    licence and datasets are kept unless given again; a result measuring the same thing (task, dataset, config,
    split, metric, protocol) as a new one is replaced, never duplicated.

    Args:
        model_dir (`str` or `os.PathLike`): the saved HIVE folder (`<run>/final` for a `hive train` run).
        results (`list` of paths or dicts): `hive eval` results JSON files, or the dicts they hold.
        repo_id (`str`, *optional*): the Hub repository (`org/name`), used as the model's name and in the examples.
        license (`str`, *optional*): a Hub licence id; defaults to the previous card's, else `"other"`.
        datasets (`list[str]`, *optional*): training datasets (Hub ids); defaults to those the run recorded.
        base_model (`list[str]`, *optional*): overrides the backbones' Hub ids found in the folder.
        keep_results (`bool`, *optional*, defaults to `True`): keep the results of the folder's previous card.
        allow_other_model (`bool`, *optional*, defaults to `False`): accept results computed on a model whose
            `config.json` differs from this folder's.

    Example:
        >>> card = build_model_card("outputs/tiny-shapes/final", ["eval_results/hive-shapes.json"])  # doctest: +SKIP
        >>> card.data.eval_results[0].metric_value  # doctest: +SKIP
        41.5
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{model_dir} has no config.json; pass the folder of a saved HIVE model (e.g. <run>/final).")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "hive":
        raise ValueError(f"{config_path} describes a {config.get('model_type')!r} model, not a HIVE model.")
    if repo_id is not None and not is_hub_id(repo_id):
        raise ValueError(f"repo_id must look like ORG/NAME, got {repo_id!r}.")
    config_sha256 = hashlib.sha256(config_path.read_bytes()).hexdigest()

    new_results = []
    for item in results:
        where = str(item) if not isinstance(item, dict) else "results"
        loaded = item if isinstance(item, dict) else load_results(item)
        identity = loaded.get("model") or {}
        if identity.get("config_sha256") not in (None, config_sha256) and not allow_other_model:
            raise ValueError(
                f"{where} was computed on another model ({identity.get('path')}, config sha256 "
                f"{identity['config_sha256'][:12]}...) than {model_dir} (config sha256 {config_sha256[:12]}...). "
                "Evaluate this folder, or pass --allow-other-model if the weights are the same."
            )
        new_results.extend(eval_results_from(loaded, where))

    previous = _previous_card(model_dir / CARD_NAME)
    previous_data = previous.data if previous is not None and "hive" in (previous.data.tags or []) else None
    kept = list(previous_data.eval_results or []) if previous_data is not None and keep_results else []
    eval_results = merge_eval_results(kept, new_results)

    provenance = read_provenance(model_dir)
    found = base_models(config, provenance)
    base_ids = list(base_model) if base_model else [hub_id for hub_id in (found["vision"], found["text"]) if hub_id]
    for hub_id in base_ids:
        if not is_hub_id(hub_id):
            raise ValueError(f"base_model {hub_id!r} is not a Hub id (ORG/NAME).")
    recorded_datasets = sorted({source for source in (provenance.get("datasets") or []) if is_hub_id(source)})
    datasets = list(datasets) if datasets else (previous_data.datasets if previous_data is not None else None) or recorded_datasets
    license = license or (previous_data.license if previous_data is not None else None) or DEFAULT_LICENSE

    folder_name = model_dir.resolve().parent.name if model_dir.resolve().name == "final" else model_dir.resolve().name
    previous_name = previous_data.model_name if previous_data is not None else None
    model_name = repo_id or previous_name or provenance.get("recipe") or folder_name
    missing = [role for role in ("vision", "text") if not found[role]] if not base_model else []
    base_model_note = ""
    if missing:
        backbones = " and ".join(missing) + (" backbones" if len(missing) > 1 else " backbone")
        base_model_note = (
            f"`base_model` leaves out the {backbones}: neither `config.json` nor the training record names a Hub id "
            "(built from a config, or loaded from a local folder). Name the source with `hive card --base-model ORG/NAME`."
        )
    limitations = []
    if license == DEFAULT_LICENSE:
        limitations.append("No licence was given for these weights (`license: other`); set one with `hive card --license`.")
    if not eval_results:
        limitations.append("The model has not been evaluated: nothing here measures how well it answers.")
    if any(result.metric_args and result.metric_args.get("limit") is not None for result in eval_results):
        limitations.append("Some scores were computed on the first questions of a benchmark only (see `limit` in the model-index).")

    hierarchy_mode = config.get("hierarchy_mode", "paired")
    details = jinja2.Template(template_path().read_text(encoding="utf-8")).render(
        vision=_backbone(config.get("vision_config") or {}, found["vision"] if not base_model else None),
        text=_backbone(config.get("text_config") or {}, found["text"] if not base_model else None),
        hierarchy_mode=hierarchy_mode,
        cross_attention_mode=config.get("cross_attention_mode", "gated"),
        hierarchy_description=HIERARCHY_DESCRIPTIONS.get(hierarchy_mode, "see the model's configuration"),
        layer_pairs=config.get("cross_attention_layers") or [],
        gate_init=config.get("gate_init", 0.0),
        num_parameters=_human(count_parameters(model_dir)),
        base_model_note=base_model_note,
        recipe_name=provenance.get("recipe"),
        stages=training_stages(model_dir, provenance),
        training_note=(
            "No training record was found next to this folder (a `hive train` run keeps its stages in `<run>/stage1`, "
            "`stage2` and `stage3` beside `<run>/final`)."
        ),
        datasets_note="" if datasets else "The training data has no Hub id (generated data or local files), so `datasets` is left out.",
        evaluations=[
            {
                "dataset": result.dataset_name,
                "split": result.dataset_split or "",
                "protocol": result.metric_config or "",
                "metric": result.metric_type,
                "value": f"{result.metric_value:.2f}",
                "questions": (result.metric_args or {}).get("num_examples", ""),
            }
            for result in eval_results
        ],
    )
    return hive_model_card(
        model_name,
        details=details,
        limitations=limitations,
        model_name=model_name,
        base_model=base_ids or None,
        datasets=datasets or None,
        license=license,
        eval_results=eval_results or None,
    )


def write_model_card(model_dir, results=(), **kwargs) -> Path:
    """Builds the card (see `build_model_card`) and writes it to `model_dir/README.md` atomically when it changed."""
    text = str(build_model_card(model_dir, results, **kwargs))
    path = Path(model_dir) / CARD_NAME
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomically(path, text)
    return path


# --- command line -----------------------------------------------------------------------------------------------
