"""`hive ablate`: does hierarchy help? HIVE against flat (LLaVA) and Q-Former (BLIP-2) fusion on equal terms.

Every fusion gets the same pretrained encoder and LLM weights, the same tokenizer, the same batches in the same order,
the same step counts, optimiser and seeds, and the same evaluation adapters and scorers. Per fusion and seed it
records hive-shapes accuracy per level (test and test_compositional), the MME-, ScienceQA- and OK-VQA-layout views,
the encoder's linear-probe accuracy after training, seconds per training step and peak memory; then it aggregates
mean and standard deviation over seeds and says which differences lie within the seed noise.

Phases:
    shared/     hive-shapes, the tokenizer (with an image placeholder token), stage 1 (masked image modelling) of the
                encoder and stage 0 (causal-LM pretraining on the synthetic text) of the LLM: built once, shared by
                every fusion and seed
    runs/       one folder per fusion and seed (each run in its own process, so its peak memory is its own)
    report      ablation.md (tables), ablation.json (everything) and plots/ (accuracy against steps, per level)

Example:
    $ hive ablate --recipe recipes/ablation-shapes.yaml --out ablation
    $ hive ablate --recipe recipes/ablation-shapes.yaml --fusions hive-paired flat --seeds 2 --out ablation-2
    $ hive ablate --quick --out /tmp/ablation-quick
    $ hive ablate --recipe recipes/ablation-shapes.yaml --match-params --set stage3.steps=400 --out ablation-matched
"""

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .ablation_fusions import FUSIONS, HiveFusionSettings
from hive_vlm.data.shapes_text import CAPTION_PROMPT, shapes_conversations
from hive_vlm.training.lm_trainer import pretraining_sequences


logger = logging.getLogger(__name__)
IMAGE_TOKEN = "<image>"
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "ablation-shapes.yaml"
SECTIONS = {
    "data": {"seed": 0, "image_size": 32, "num_train": 1000, "num_validation": 64, "num_test": 200,
             "num_test_compositional": 200, "max_length": 256, "turns_per_chat": 3},
    "pretrain": {"steps": 300, "batch_size": 32, "learning_rate": 3e-3},
    "mim": {"steps": 50, "batch_size": 32, "learning_rate": 1e-3, "mask_ratio": 0.5},
    "stage2": {"steps": 100, "batch_size": 16, "learning_rate": 1e-3, "vision_learning_rate": 1e-4, "weight_decay": 0.0,
               "train_vision": False},
    "stage3": {"steps": 200, "batch_size": 16, "learning_rate": 1e-3, "vision_learning_rate": 1e-4, "weight_decay": 0.0,
               "train_vision": True, "train_llm": False},
    "eval": {"checkpoints": 4, "validation_limit": 64, "batch_size": 32, "limit": None, "probe_epochs": 30,
             "probe_limit": None},
}  # fmt: skip
# --quick: every fusion end to end in minutes; the numbers mean nothing.
QUICK = {
    "seeds": [0],
    "model": {"vision_config": {"hidden_size": 32, "intermediate_size": 64}, "text_config": {"hidden_size": 32, "intermediate_size": 64}},
    "data": {"num_train": 48, "num_validation": 4, "num_test": 4, "num_test_compositional": 4, "turns_per_chat": 2},
    "pretrain": {"steps": 4, "batch_size": 16},
    "mim": {"steps": 2, "batch_size": 16},
    "stage2": {"steps": 3, "batch_size": 4},
    "stage3": {"steps": 4, "batch_size": 4},
    "fusion": {"qformer_num_hidden_layers": 1, "qformer_num_query_tokens": 4},
    "eval": {"checkpoints": 2, "validation_limit": 4, "batch_size": 16, "limit": 4, "probe_epochs": 2, "probe_limit": 16},
}  # fmt: skip


@dataclass
class HiveAblationSettings:
    """What `hive ablate` runs, read from a recipe YAML (`recipes/ablation-shapes.yaml` documents every key).

    Args:
        name (`str`): the study's name.
        fusions (`list[str]`): fusions to compare, from `FUSIONS`.
        seeds (`list[int]`): seeds (fusion initialisation and batch order); the data and backbones are shared.
        model (`dict`): `vision_config` (a ViT-like encoder config) and `text_config` (a causal-LM config; its vocabulary
            is sized to the tokenizer).
        data, pretrain, mim, stage2, stage3, eval (`dict`): see `SECTIONS` for their keys and defaults.
        fusion (`HiveFusionSettings`): the fusions' shapes.
        match_params (`bool`): widen or narrow each fusion until its stage-2 budget is within 10% of hive-paired's.
    """

    name: str = "ablation"
    fusions: list = field(default_factory=lambda: list(FUSIONS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)
    mim: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)
    stage3: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    fusion: HiveFusionSettings = field(default_factory=HiveFusionSettings)
    match_params: bool = False


def _merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def parse_settings(values: dict, where: str = "recipe") -> HiveAblationSettings:
    """Validates a recipe mapping (unknown keys raise, naming the section and the allowed keys; a value of another
    kind than its default raises, naming the key) and fills defaults."""
    from hive_vlm.training.recipe import check_scalar

    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}.")
    allowed = set(HiveAblationSettings.__dataclass_fields__)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
    sections = {}
    for section, defaults in SECTIONS.items():
        given = values.get(section) or {}
        extra = sorted(set(given) - set(defaults))
        if extra:
            raise ValueError(f"{where}.{section}: unknown key(s) {extra}; allowed: {sorted(defaults)}.")
        for key, value in given.items():
            check_scalar(f"{where}.{section}.{key}", value, type(defaults[key]))  # a None default takes anything
        sections[section] = {**defaults, **given}
    fusion_values = values.get("fusion") or {}
    extra = sorted(set(fusion_values) - set(HiveFusionSettings.__dataclass_fields__))
    if extra:
        raise ValueError(f"{where}.fusion: unknown key(s) {extra}; allowed: {sorted(HiveFusionSettings.__dataclass_fields__)}.")
    model = values.get("model") or {}
    if set(model) != {"vision_config", "text_config"}:
        raise ValueError(f"{where}.model: give exactly vision_config and text_config (got {sorted(model)}).")
    fusions = list(values.get("fusions") or FUSIONS)
    wrong = [name for name in fusions if name not in FUSIONS]
    if wrong or len(set(fusions)) != len(fusions):
        raise ValueError(f"{where}.fusions: {fusions} must be distinct names from {list(FUSIONS)}.")
    seeds = values.get("seeds", [0, 1, 2])
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(seed, int) for seed in seeds):
        raise ValueError(f"{where}.seeds: give a number of seeds or a list of integers, got {values.get('seeds')!r}.")
    for stage in ("stage2", "stage3"):
        if sections[stage]["steps"] < 1 or sections[stage]["batch_size"] < 1:
            raise ValueError(f"{where}.{stage}: steps and batch_size must be at least 1.")
    if sections["eval"]["checkpoints"] < 1:
        raise ValueError(f"{where}.eval.checkpoints must be at least 1 (the end of stage 3).")
    return HiveAblationSettings(name=values.get("name", "ablation"), fusions=fusions, seeds=seeds, model=model,
                                fusion=HiveFusionSettings(**fusion_values), match_params=bool(values.get("match_params", False)),
                                **sections)  # fmt: skip


def load_settings(path=None, quick: bool = False, overrides: list[str] | None = None) -> HiveAblationSettings:
    """Reads a recipe (the default one when `path` is None), applies `--quick` and `key=value` overrides."""
    from hive_vlm.training.recipe import apply_overrides

    path = Path(path or DEFAULT_RECIPE)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist; see recipes/ablation-shapes.yaml.")
    values = yaml.safe_load(path.read_text()) or {}
    if quick:
        quick_values = copy.deepcopy(QUICK)
        if ((values.get("model") or {}).get("vision_config") or {}).get("model_type", "vit") != "vit":
            del quick_values["model"]["vision_config"]  # its widths are ViT keys; another encoder stays as the recipe has it
        values = _merge(values, quick_values)
    return parse_settings(apply_overrides(values, overrides or []), where=str(path))


def pretrain_text_model(config: dict, sequences: list[list[int]], pad_token_id: int, settings: dict, out, seed: int = 0) -> None:
    """Stage 0: a causal LM built from `config`, trained on `sequences` (AdamW, cosine schedule) and saved to `out`.
    HIVE assumes a pretrained LLM; a random one cannot express confident answers through a frozen head."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .ablation_run import batch_order, schedule

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=0.01)
    steps = settings["steps"]
    for step, indices in enumerate(batch_order(len(sequences), settings["batch_size"], steps, seed)):
        rows = [sequences[i] for i in indices]
        longest = max(map(len, rows))
        input_ids = torch.full((len(rows), longest), pad_token_id)
        labels = torch.full((len(rows), longest), -100)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = labels[row, : len(ids)] = torch.tensor(ids)
        for group in optimizer.param_groups:
            group["lr"] = settings["learning_rate"] * schedule(step, steps)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("stage 0 step %d/%d: loss %.3f", step + 1, steps, loss.item())
    model.save_pretrained(out)


def pretrain_encoder(vision_dir, processor, images, settings: dict, out, seed: int = 0) -> None:
    """Stage 1 of HIVE (`HiveMIMTrainer`, SimMIM) on the train images; the encoder is written to `out`."""
    from transformers import set_seed

    from hive_vlm.data.collators import HiveMaskedImageCollator
    from hive_vlm.training.mim_config import HiveMIMConfig
    from hive_vlm.training.mim_trainer import HiveMIMModel, HiveMIMTrainer, load_encoder_for_mim

    set_seed(seed)
    encoder = load_encoder_for_mim(str(vision_dir))
    args = HiveMIMConfig(output_dir=str(Path(out).parent / "mim-run"), max_steps=settings["steps"], per_device_train_batch_size=settings["batch_size"],
                         learning_rate=settings["learning_rate"], mask_ratio=settings["mask_ratio"], save_strategy="no",
                         report_to="none", use_cpu=True, seed=seed, logging_steps=max(1, settings["steps"]), disable_tqdm=True)  # fmt: skip
    model = HiveMIMModel(encoder)
    collator = HiveMaskedImageCollator(processor, patch_size=encoder.config.patch_size, mask_ratio=settings["mask_ratio"],
                                       mask_patch_size=model.stride, seed=seed)  # fmt: skip
    trainer = HiveMIMTrainer(model=model, args=args, data_collator=collator, train_dataset=images)
    trainer.train()
    trainer.save_encoder(str(out), processor.image_processor)


def prepare_shared(settings: HiveAblationSettings, folder) -> dict:
    """Builds what every fusion shares into `folder` (once; an existing `meta.json` means done) and returns the meta:
    hive-shapes and its benchmark views, the stage-3 chats, the processor (shapes tokenizer plus `<image>`), the
    MIM-trained encoder, the pretrained LLM, and the encoder's linear-probe accuracy before any fusion training."""
    import datasets
    import torch
    from transformers import AutoConfig, AutoModel, ViTImageProcessorPil

    from hive_vlm.data.schema import message_text
    from hive_vlm.data.shapes import HiveShapesConfig, generate_shapes
    from hive_vlm.data.shapes_layouts import SHORT_ANSWER_PROMPT, to_mme, to_okvqa, to_scienceqa
    from hive_vlm.files import write_json_atomic
    from hive_vlm.data.tokenizer import build_tokenizer
    from hive_vlm.files import atomic_folder
    from modeling_hive import HiveProcessor

    from .ablation_run import probe_encoder

    folder = Path(folder)
    recipe = {key: getattr(settings, key) for key in ("model", "data", "pretrain", "mim")}
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("recipe") != json.loads(json.dumps(recipe)):
            raise ValueError(f"{folder} was built from other model/data/pretrain/mim settings; pass a new --out.")
        return meta
    started = time.perf_counter()
    data = settings.data
    vision_config = dict(settings.model["vision_config"])
    if vision_config.get("model_type", "vit") == "vit":  # the ViT defaults; another family gives its whole config
        vision_config = {"model_type": "vit", "image_size": data["image_size"], "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 4,
                         "num_attention_heads": 4, "intermediate_size": 128, **vision_config}  # fmt: skip
    if vision_config["image_size"] != data["image_size"]:
        raise ValueError(f"model.vision_config.image_size ({vision_config['image_size']}) must equal data.image_size ({data['image_size']}).")
    shapes_path = folder / "data" / "shapes"
    if not shapes_path.is_dir():
        with atomic_folder(shapes_path) as out:
            generate_shapes(seed=data["seed"], num_train=data["num_train"], num_validation=data["num_validation"], num_test=data["num_test"],
                            num_test_compositional=data["num_test_compositional"],
                            config=HiveShapesConfig(image_size=data["image_size"])).save_to_disk(str(out))  # fmt: skip
    shapes = datasets.load_from_disk(str(shapes_path))
    for name, view in (("mme", to_mme), ("scienceqa", to_scienceqa), ("okvqa", to_okvqa)):
        with atomic_folder(folder / "data" / "views" / name) as out:
            view(shapes["test"]).save_to_disk(str(out))
    chats = shapes_conversations(shapes["train"], data["seed"], data["turns_per_chat"])
    with atomic_folder(folder / "data" / "chats") as out:
        chats.save_to_disk(str(out))
    chats = datasets.load_from_disk(str(folder / "data" / "chats"))

    def corpus():
        yield CAPTION_PROMPT
        yield SHORT_ANSWER_PROMPT
        yield from shapes["train"]["caption"]
        for messages in chats["messages"]:
            for message in messages:
                yield message_text(message)

    tokenizer = build_tokenizer(corpus())
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    processor = HiveProcessor(image_processor=ViTImageProcessorPil(size={"height": data["image_size"], "width": data["image_size"]}),
                              tokenizer=tokenizer)  # fmt: skip
    with atomic_folder(folder / "processor") as out:
        processor.save_pretrained(out)

    torch.manual_seed(data["seed"])
    with atomic_folder(folder / "backbones" / "vision-init") as out:
        AutoModel.from_config(AutoConfig.for_model(**vision_config)).save_pretrained(out)
    with atomic_folder(folder / "backbones" / "vision") as out:
        pretrain_encoder(folder / "backbones" / "vision-init", processor, shapes["train"].select_columns(["image"]), settings.mim, out, data["seed"])

    text_config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "intermediate_size": 128, "max_position_embeddings": 2 * data["max_length"], **settings.model["text_config"],
                   "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    sequences = pretraining_sequences(shapes["train"]["caption"], chats["messages"], tokenizer, processor.chat_template,
                                      data["max_length"], CAPTION_PROMPT)
    with atomic_folder(folder / "backbones" / "text") as out:
        pretrain_text_model(text_config, sequences, tokenizer.pad_token_id, settings.pretrain, out, data["seed"])
        tokenizer.save_pretrained(out)

    encoder = AutoModel.from_pretrained(folder / "backbones" / "vision")
    meta = {"recipe": recipe, "image_token_id": image_token_id, "caption_prompt": CAPTION_PROMPT, "vocab_size": len(tokenizer),
            "vision_config": vision_config, "text_config": text_config, "pretrain_sequences": len(sequences),
            "linear_probe_before": probe_encoder(encoder, processor.image_processor, folder, settings.eval["probe_epochs"],
                                                 settings.eval["probe_limit"]),
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    write_json_atomic(folder / "meta.json", meta)
    return meta


def _run_settings(settings: dict | None) -> dict | None:
    """What one run depends on: everything but the lists of fusions and seeds (so a study can grow or shrink)."""
    if settings is None:
        return None
    kept = {key: value for key, value in settings.items() if key not in ("fusions", "seeds")}
    return {**kept, **{section: {**defaults, **(kept.get(section) or {})} for section, defaults in SECTIONS.items()}}


def run_one(spec: dict, isolate: bool) -> dict:
    """One fusion and seed: in a fresh spawned process when `isolate` (peak memory is then that run's own)."""
    from .ablation_run import run_fusion, run_fusion_in_child

    if not isolate:
        return run_fusion(spec)
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=run_fusion_in_child, args=(spec,))
    process.start()
    process.join()
    path = Path(spec["out"]) / "result.json"
    if process.exitcode != 0 or not path.is_file():
        raise RuntimeError(f"{spec['fusion']} seed {spec['seed']} failed (exit code {process.exitcode}); see the log above.")
    return json.loads(path.read_text())


def run_ablation(settings: HiveAblationSettings, out, isolate: bool = True, threads: int | None = None) -> dict:
    """Prepares the shared backbones and data, runs every fusion with every seed (finished runs are kept and
    reused), and writes the report. Returns the report's JSON content.

    Args:
        settings (`HiveAblationSettings`): what to run.
        out (`str` or `os.PathLike`): the study's folder (`shared/`, `runs/`, `ablation.md`, `ablation.json`, `plots/`).
        isolate (`bool`): one process per run (honest per-run peak memory); False runs everything in this process.
        threads (`int`, *optional*): torch threads per run (torch's default when unset). On a machine shared with
            other jobs, 1 avoids oversubscribed threads spinning against each other (several times slower).

    Example:
        >>> report = run_ablation(load_settings(quick=True), "/tmp/ablation-quick")  # doctest: +SKIP
        >>> sorted(report["aggregate"])  # doctest: +SKIP
        ['flat', 'hive-all-levels', 'hive-paired', 'qformer', 'single-level']
    """
    from .ablation_fusions import match_budgets
    from .ablation_report import write_report
    from .ablation_run import quiet

    quiet()
    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"[ablate] shared backbones and data in {out / 'shared'}", flush=True)
    meta = prepare_shared(settings, out / "shared")
    matched = None
    if settings.match_params:
        shared = out / "shared"
        matched = match_budgets(settings.fusions, "hive-paired", shared / "backbones" / "vision", shared / "backbones" / "text",
                                meta["image_token_id"], settings.fusion)  # fmt: skip
        settings.fusion.intermediate_sizes = {name: row["width"] for name, row in matched.items() if row["width"]}
        print(f"[ablate] matched budgets: {matched}", flush=True)
    runs = []
    for seed in settings.seeds:
        for name in settings.fusions:
            run_dir = out / "runs" / f"{name}-seed{seed}"
            spec = {"fusion": name, "seed": seed, "shared": str(out / "shared"), "out": str(run_dir), "settings": asdict(settings),
                    "threads": threads}
            if (run_dir / "result.json").is_file():
                kept = json.loads((run_dir / "result.json").read_text())
                if _run_settings(kept.get("settings")) != _run_settings(json.loads(json.dumps(spec["settings"]))):
                    raise ValueError(f"{run_dir} holds a run with other settings; pass a new --out (or delete that folder).")
                print(f"[ablate] {name} seed {seed}: kept from an earlier run", flush=True)
                runs.append(kept)
                continue
            print(f"[ablate] {name} seed {seed} (t={time.perf_counter() - started:.0f}s)", flush=True)
            result = run_one(spec, isolate)
            runs.append(result)
            print(f"[ablate] {name} seed {seed}: test accuracy {result['final']['hive-shapes-test']['accuracy']:.1f}, "
                  f"{result['timing']['wall_seconds']:.0f}s", flush=True)  # fmt: skip
    report = write_report(out, settings, meta, runs, matched)
    print(f"[ablate] report: {out / 'ablation.md'} ({time.perf_counter() - started:.0f}s)", flush=True)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--recipe", help="Ablation recipe YAML (default recipes/ablation-shapes.yaml).")
    parser.add_argument("--out", default="ablation", help="Folder for the study (reruns keep finished runs).")
    parser.add_argument("--fusions", nargs="+", choices=FUSIONS, help="Fusions to compare (default: the recipe's, all five).")
    parser.add_argument("--seeds", type=int, help="Number of seeds 0..N-1 (default: the recipe's).")
    parser.add_argument("--match-params", action="store_true", help="Match every fusion's trainable budget to hive-paired's within 10%%.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and a few steps: every output in minutes (numbers mean nothing).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a recipe value, e.g. --set stage3.steps=400 (repeatable).")  # fmt: skip
    parser.add_argument("--threads", type=int, help="Torch threads per run (default: torch's); 1 on a machine shared with other jobs.")
    parser.add_argument("--no-isolate", action="store_true", help="Run every fusion in this process (faster to start; memory then shares one process).")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.fusions:
        overrides.append(f"fusions={json.dumps(args.fusions)}")
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    if args.match_params:
        overrides.append("match_params=true")
    settings = load_settings(args.recipe, quick=args.quick, overrides=overrides)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    run_ablation(settings, args.out, isolate=not args.no_isolate, threads=args.threads)
    return 0
