"""One fusion trained and evaluated with one seed: the unit of `hive ablate`.

Every fusion trains through `hive train`'s own stage trainers (`HiveAlignmentTrainer`, `HiveFinetuneTrainer`), with
the recipe's stage settings as `hive train` reads them (`stage_arguments`), so the schedule, warm-up, accumulation,
clipping, freezing and LoRA are `hive train`'s. Every fusion sees the same batches in the same order (the Trainer's
sampler, seeded per run and stage; each batch's SHA-256 over its pixels, token ids and labels is recorded) and is
evaluated by the same adapters and scorers. The LLM stays frozen unless a stage sets `train_llm` (the study's
`train_llm` and `pretrain_llm` do) or stage 3 sets `lora_r` (LoRA adapters).

    stage 2  the fusion weights train on the recipe's stage-2 captions (`HiveCaptionCollator`); the encoder too with
             `stage2.train_vision` (frozen by default, as in the paper)
    stage 3  the fusion weights and the encoder (its own learning rate) train on the recipe's stage-3 chats
             (`HiveChatCollator`); with `stage3.lora_r`, LoRA adapters on every fusion's LLM too

Each stage also records what it did: the logged losses, learning rates and gradient norms (before and after
clipping), the optimiser steps and batches, and which weights changed (every trainable one should, no frozen one may).

Example:
    >>> result = run_fusion({"fusion": "flat", "seed": 0, "shared": "abl/shared", "out": "abl/runs/flat-0",
    ...                      "study": study_dict})  # doctest: +SKIP
    >>> result["final"]["test"]["accuracy"]  # doctest: +SKIP
"""

import hashlib
import importlib
import json
import multiprocessing
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import datasets
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator
from hive_vlm.eval.registry import benchmark_adapter
from hive_vlm.eval.runner import evaluate_benchmark
from hive_vlm.files import atomic_folder, write_json_atomic
from hive_vlm.training.alignment_trainer import HiveAlignmentTrainer
from hive_vlm.training.finetune_trainer import HiveFinetuneTrainer
from modeling_hive import HiveProcessor
from modeling_hive.processing_hive import vqa_prompt

from .fusions import HiveFusionSettings, build_fusion
from .probe import probe_encoder
from .settings import stage_arguments
from .shared import shared_path



def batch_hash(batch: dict) -> str:
    """SHA-256 (first 16 hex digits) of a collated batch's pixels, token ids and labels."""
    digest = hashlib.sha256()
    for key in ("pixel_values", "input_ids", "labels"):
        digest.update(key.encode())
        digest.update(batch[key].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def reset_peak_rss() -> tuple[str, float]:
    """Starts a peak-memory window: on Linux the kernel's peak-RSS counter is reset (`/proc/self/clear_refs` "5") and
    the current RSS returned; elsewhere `ru_maxrss` so far is the baseline. Returns `(method, baseline MiB)`."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        current = _status_mb("VmRSS")
        if current is not None:
            return "VmHWM", current
    except OSError:
        pass
    return "ru_maxrss", peak_rss_mb("ru_maxrss")


def peak_rss_mb(method: str) -> float:
    """Peak resident set size in MiB: since the last `reset_peak_rss` ("VmHWM"), or of the whole process ("ru_maxrss":
    KiB on Linux, bytes on macOS)."""
    if method == "VmHWM":
        return _status_mb("VmHWM")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def predict_answers(fusion, processor, images, prompts, max_new_tokens: int = 16) -> list[str]:
    """Greedy answers, prompted as `hive_vlm.eval.runner.generate_answers` prompts HIVE (`vqa_prompt`, left padding);
    inline fusions get their image tokens after the first token, as in training."""
    rendered = [vqa_prompt(processor, prompt) for prompt in prompts]
    texts, text_kwargs = [text for text, _ in rendered], rendered[0][1] if rendered else {}
    inputs = processor(images=list(images), text=texts, return_tensors="pt", padding=True, padding_side="left", **text_kwargs)
    inputs = {key: value.to(fusion.model.device) for key, value in fusion.model_inputs(dict(inputs)).items()}
    fusion.model.eval()
    with torch.inference_mode():
        sequences = fusion.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
    fusion.model.train()
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
    return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


class HiveStudyCollator:
    """A stage's collator for one fusion: every batch as the fusion's forward takes it, and its `batch_hash` recorded
    in the order the batches were made (the data loader may make one more than training reads)."""

    def __init__(self, collator, fusion):
        self.collator = collator
        self.fusion = fusion
        self.hashes = []

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        self.hashes.append(batch_hash(batch))
        return self.fusion.model_inputs(batch)


class HiveStudyCallback(TrainerCallback):
    """Records each optimiser step's seconds (what `on_step` runs after it excluded) and gradient norm after clipping
    (the Trainer logs the norm before it), then calls `on_step(global_step)`."""

    def __init__(self, on_step=None):
        self.on_step = on_step
        self.seconds, self.clipped_norms = [], []
        self.started = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.clipped_norms.append(round(torch.nn.utils.get_total_norm(grads).item(), 6) if grads else 0.0)

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)
        if self.on_step is not None:
            self.on_step(state.global_step)


def weight_digests(model) -> dict[str, str]:
    """SHA-256 of every parameter's bytes, by name: what changed in training, without a second copy of the model."""
    return {name: hashlib.sha256(p.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()
            for name, p in model.named_parameters()}  # fmt: skip


def train_stage(fusion, stage: int, values: dict, dataset, collator, output_dir, seed: int, on_step=None) -> dict:
    """Trains stage `stage` of `fusion` through its `hive train` trainer.

    Args:
        fusion (`HiveAblationFusion`): the model and its components (what the trainer freezes and counts).
        stage (`int`): 2 (`HiveAlignmentTrainer`) or 3 (`HiveFinetuneTrainer`).
        values (`dict`): the stage's settings (`stage_values`); `stage_arguments` makes its `TrainingArguments`.
        dataset (`datasets.Dataset`): rows the collator reads.
        collator: turns a list of rows into a HIVE batch (`HiveCaptionCollator`, `HiveChatCollator`).
        output_dir: the stage's Trainer folder (nothing is saved there: no checkpoints in a study).
        seed (`int`): the Trainer's seed: the batch order, dropout and LoRA's fresh weights.
        on_step (`Callable[[int], None]`, *optional*): called after every optimiser step with the steps done.

    Returns:
        `{"parameters", "steps", "micro_batches", "batch_hashes", "losses", "learning_rates", "grad_norms",
        "clipped_grad_norms", "seconds_per_step", "weights"}`: seconds per step are the median over steps (robust to the
        first step's one-time costs and to other processes on a shared machine); `weights` names the trainable weights
        training left unchanged and the frozen ones it changed (both lists should be empty).
    """
    args = stage_arguments(stage, values, output_dir, seed)
    if args.n_gpu > 1:  # the Trainer would wrap the model in DataParallel: another batch per step, other batches per fusion
        raise ValueError(f"a study trains each run on one device, and {args.n_gpu} GPUs are visible; set CUDA_VISIBLE_DEVICES "
                         "to one GPU (runs of a study can go to different GPUs as separate commands).")  # fmt: skip
    torch.manual_seed(seed)  # LoRA's fresh weights are made before the Trainer seeds itself
    trainer_class = HiveAlignmentTrainer if stage == 2 else HiveFinetuneTrainer
    collator, recorder = HiveStudyCollator(collator, fusion), HiveStudyCallback(on_step)
    trainer = trainer_class(fusion.model, args, components=fusion, data_collator=collator, train_dataset=dataset, callbacks=[recorder])
    trainer.remove_callback(PrinterCallback)  # the study prints its own progress; result.json keeps every logged step
    trainable = {name for name, p in fusion.model.named_parameters() if p.requires_grad}
    before = weight_digests(fusion.model)
    micro_batches = []  # training forwards, counted as they run (generation at checkpoints runs without gradients)
    count = fusion.model.register_forward_pre_hook(lambda module, inputs: micro_batches.append(1) if torch.is_grad_enabled() else None)
    try:
        trainer.train()
    finally:
        count.remove()
    after = weight_digests(fusion.model)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    changed = {name for name in after if after[name] != before[name]}
    return {
        "parameters": trainer.trainable_counts, "steps": trainer.state.global_step, "micro_batches": len(micro_batches),
        "batch_hashes": collator.hashes[: len(micro_batches)], "losses": [round(entry["loss"], 4) for entry in logged],
        "learning_rates": [entry["learning_rate"] for entry in logged], "grad_norms": [entry.get("grad_norm") for entry in logged],
        "clipped_grad_norms": recorder.clipped_norms, "seconds_per_step": statistics.median(recorder.seconds),
        "weights": {"trainable": len(trainable), "frozen": len(after) - len(trainable),
                    "trainable_unchanged": sorted(trainable - changed), "frozen_changed": sorted(changed - trainable)},
    }  # fmt: skip


def evaluate_fusion(fusion, processor, entries: list[dict], out: Path, eval_settings: dict, limit: int | None) -> dict:
    """Scores `fusion` on each evaluation of `entries` (`hive_vlm.ablation.shared.evaluations`) through its adapter
    and official scorer; results are written to `out/<label>.json` and returned as label -> scores."""
    scores = {}
    for entry in entries:
        benchmark = benchmark_adapter(entry["benchmark"], image_root=entry["image_root"])
        path = out / f"{entry['label']}.json"
        path.unlink(missing_ok=True)
        predict = partial(predict_answers, fusion, processor, max_new_tokens=benchmark.max_new_tokens)
        limits = [value for value in (entry["limit"], limit) if value]
        result = evaluate_benchmark(benchmark, entry["data"], predict, path, protocol=entry["protocol"], split=entry["split"],
                                    limit=min(limits) if limits else None, batch_size=eval_settings["batch_size"],
                                    progress=False)  # fmt: skip
        scores[entry["label"]] = result["scores"]
    return scores


def quiet() -> None:
    """No progress bars and no loading reports from transformers and datasets (the harness prints its own progress)."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()


def shared_inputs(shared: Path) -> tuple[dict, object, object, object]:
    """What every run of a study reads from the shared folder: its meta, the processor, the captions and the chats."""
    meta = json.loads((shared / "meta.json").read_text())
    processor = HiveProcessor.from_pretrained(shared / "processor")
    return meta, processor, datasets.load_from_disk(str(shared / "data" / "stage2")), datasets.load_from_disk(str(shared / "data" / "stage3"))


def start_clock() -> tuple:
    """The start of a run's time and peak-memory window (before its model is built, so both count it)."""
    method, baseline = reset_peak_rss()
    return method, baseline, time.perf_counter()


def train_and_evaluate(fusion, shared: Path, out: Path, stage2: dict, stage3: dict, eval_settings: dict, seed: int, clock: tuple,
                       seed_offset: int = 0) -> dict:
    """What every run of a study does once its model is built: stage 2 on the shared captions, stage 3 on the shared
    chats (scored on the checkpoint evaluation at `eval_settings["checkpoints"]` points), then every evaluation, the
    linear probe of the encoder (hive-shapes) and the run's cost.

    Args:
        fusion (`HiveAblationFusion`): the model.
        shared, out (`Path`): the shared folder and the run's folder.
        stage2, stage3 (`dict`): each stage's settings (`stage_values`).
        eval_settings (`dict`): the study's evaluation settings.
        seed (`int`): fixes the batch order (with `seed_offset`, which keeps two studies' orders apart).
        clock (`tuple`): `start_clock()`, taken before the model was built.

    Returns:
        `{"parameters", "stages", "curve", "final", "linear_probe" (hive-shapes), "timing", "memory"}`.
    """
    meta, processor, captions, chats = shared_inputs(shared)
    collator = HiveCaptionCollator(processor, prompt=meta["caption_prompt"], max_length=meta["max_length"]["stage2"])
    trained = {"stage2": train_stage(fusion, 2, stage2, captions, collator, out / "stage2", seed * 1000 + seed_offset + 2)}
    checkpoints = sorted({round(stage3["max_steps"] * k / eval_settings["checkpoints"]) for k in range(eval_settings["checkpoints"] + 1)})
    curve = []

    def checkpoint(step: int) -> None:
        if step in checkpoints:
            validation = meta["validation"]
            scores = evaluate_fusion(fusion, processor, [validation], out / "checkpoints" / f"step-{step}", eval_settings,
                                     eval_settings["validation_limit"])  # fmt: skip
            curve.append({"step": step, **scores[validation["label"]]})

    checkpoint(0)
    collator = HiveChatCollator(processor, max_length=meta["max_length"]["stage3"])
    trained["stage3"] = train_stage(fusion, 3, stage3, chats, collator, out / "stage3", seed * 1000 + seed_offset + 3, checkpoint)
    memory_method, baseline_rss, started = clock
    train_seconds = time.perf_counter() - started
    result = {"parameters": {stage: trained[stage]["parameters"] for stage in trained}, "stages": trained, "curve": curve}
    result["final"] = evaluate_fusion(fusion, processor, meta["evaluations"], out / "final", eval_settings, eval_settings.get("limit"))
    if meta["shapes"]:
        result["linear_probe"] = probe_encoder(fusion.encoder, processor.image_processor, shared / "data" / "shapes",
                                               eval_settings["probe_epochs"], eval_settings.get("probe_limit"))  # fmt: skip
    peak = peak_rss_mb(memory_method)
    result["timing"] = {"stage2_seconds_per_step": round(trained["stage2"]["seconds_per_step"], 4),
                        "stage3_seconds_per_step": round(trained["stage3"]["seconds_per_step"], 4),
                        "wall_seconds": round(time.perf_counter() - started, 1), "train_wall_seconds": round(train_seconds, 1)}  # fmt: skip
    result["memory"] = {"peak_rss_mb": round(peak, 1), "peak_rss_delta_mb": round(peak - baseline_rss, 1),
                        "baseline_rss_mb": round(baseline_rss, 1), "method": memory_method}  # fmt: skip
    return result


def run_fusion(spec: dict) -> dict:
    """Trains and evaluates one fusion with one seed; writes `spec["out"]/result.json` and returns it.

    Args:
        spec (`dict`): `fusion`, `seed`, `shared` (the folder `prepare_shared` wrote), `out` (this run's folder) and
            `study` (`HiveStudySettings` as a dict, with `fusion` holding `HiveFusionSettings` fields).
    """
    quiet()
    study, seed, name = spec["study"], spec["seed"], spec["fusion"]
    shared, out = Path(spec["shared"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((shared / "meta.json").read_text())
    clock = start_clock()
    fusion = build_fusion(name, shared_path(shared, meta["vision"]), shared_path(shared, meta["text"]), meta["image_token_id"],
                          HiveFusionSettings(**study["fusion"]), seed=seed, vocab_size=meta["vocab_size"])  # fmt: skip
    result = {"fusion": name, "seed": seed, "study": study, "num_image_tokens": fusion.num_image_tokens, "readout": fusion.readout}
    result.update(train_and_evaluate(fusion, shared, out, study["stage2"], study["stage3"], study["eval"], seed, clock))
    result["memory"]["isolated"] = bool(spec.get("isolated"))
    with atomic_folder(out / "encoder") as folder:  # the encoder as this fusion left it: what `hive transfer` reuses
        fusion.encoder.save_pretrained(folder)
        HiveProcessor.from_pretrained(shared / "processor").image_processor.save_pretrained(folder)
    write_json_atomic(out / "result.json", result)
    return result


def run_in_child(target: str, spec: dict) -> None:
    """Entry point of the subprocess a study starts per run (`target`: "module:function"), so the peak memory it
    reports is that run's alone."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)({**spec, "isolated": True})


def run_isolated(target: str, spec: dict, isolate: bool) -> dict:
    """One run (`target`, "module:function", takes `spec` and writes `spec["out"]/result.json`): in a fresh spawned
    process when `isolate`, so its peak memory is its own."""
    if not isolate:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(spec)
    process = multiprocessing.get_context("spawn").Process(target=run_in_child, args=(target, spec))
    process.start()
    process.join()
    path = Path(spec["out"]) / "result.json"
    if process.exitcode != 0 or not path.is_file():
        raise RuntimeError(f"{spec.get('fusion') or spec.get('variant')} seed {spec['seed']} failed (exit code "
                           f"{process.exitcode}); see the log above.")  # fmt: skip
    return json.loads(path.read_text())
