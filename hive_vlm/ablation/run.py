"""One fusion trained and evaluated with one seed: the unit of `hive ablate`.

Every fusion sees the same batches in the same order (the seed fixes the order; each batch's SHA-256 over its pixels,
token ids and labels is recorded per step), trains the same numbers of steps with the same optimiser, and is
evaluated by the same adapters and scorers. The LLM stays frozen unless stage 3 sets `lora_r` (LoRA adapters) or the
study sets `train_llm` (the whole LLM, in stage 3) or `pretrain_llm` (all of it but its embeddings and head, in stages
2 and 3, as the authors' code trains it).

    stage 2  the fusion weights train on the recipe's stage-2 captions (`HiveCaptionCollator`); the encoder too with
             `stage2.train_vision` (frozen by default, as in the paper)
    stage 3  the fusion weights and the encoder (its own learning rate) train on the recipe's stage-3 chats
             (`HiveChatCollator`); with `stage3.lora_r`, LoRA adapters on every fusion's LLM too

Example:
    >>> result = run_fusion({"fusion": "flat", "seed": 0, "shared": "abl/shared", "out": "abl/runs/flat-0",
    ...                      "study": study_dict})  # doctest: +SKIP
    >>> result["final"]["test"]["accuracy"]  # doctest: +SKIP
"""

import hashlib
import importlib
import json
import math
import multiprocessing
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import datasets
import torch
from transformers.utils import logging as hf_logging

from hive_vlm.data.collators import HiveCaptionCollator, HiveChatCollator
from hive_vlm.eval.registry import benchmark_adapter
from hive_vlm.eval.runner import evaluate_benchmark
from hive_vlm.files import atomic_folder, write_json_atomic
from modeling_hive import HiveProcessor
from modeling_hive.processing_hive import vqa_prompt

from .fusions import HiveFusionSettings, build_fusion
from .probe import probe_encoder
from .shared import shared_path



def batch_hash(batch: dict) -> str:
    """SHA-256 (first 16 hex digits) of a collated batch's pixels, token ids and labels."""
    digest = hashlib.sha256()
    for key in ("pixel_values", "input_ids", "labels"):
        digest.update(key.encode())
        digest.update(batch[key].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def batch_order(num_rows: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices of each step's batch: seeded permutations of the rows, one after another."""
    generator = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < steps * batch_size:
        order += torch.randperm(num_rows, generator=generator).tolist()
    return [order[step * batch_size : (step + 1) * batch_size] for step in range(steps)]


def schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0: the learning-rate factor of `step`."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


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
    inputs = fusion.model_inputs(dict(inputs))
    fusion.model.eval()
    with torch.inference_mode():
        sequences = fusion.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
    fusion.model.train()
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
    return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _optimizer(fusion, learning_rate: float, vision_learning_rate: float, weight_decay: float):
    vision = {id(p) for p in fusion.components["vision"]}
    groups = [{"params": [p for p in fusion.model.parameters() if p.requires_grad and (id(p) in vision) == is_vision], "lr": lr}
              for is_vision, lr in ((False, learning_rate), (True, vision_learning_rate))]  # fmt: skip
    groups = [group for group in groups if group["params"]]
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def train_stage(fusion, dataset, collator, stage: dict, seed: int, on_step=None) -> dict:
    """Trains `stage["steps"]` AdamW steps (gradients clipped at 1.0) over seeded batches of `dataset`.

    Args:
        fusion (`HiveAblationFusion`): trainable flags already set for this stage.
        dataset (`datasets.Dataset`): rows the collator reads.
        collator: turns a list of rows into a batch.
        stage (`dict`): `steps`, `batch_size`, `learning_rate`, optional `vision_learning_rate`, `weight_decay`.
        seed (`int`): fixes the batch order.
        on_step (`Callable[[int], None]`, *optional*): called after every step with the number of steps done.

    Returns:
        `{"batch_hashes", "losses", "seconds_per_step"}`: seconds per step are the median over steps (robust to the
        first step's one-time costs and to other processes on a shared machine) and exclude `on_step`.
    """
    steps = stage["steps"]
    optimizer = _optimizer(fusion, stage["learning_rate"], stage.get("vision_learning_rate", stage["learning_rate"]),
                           stage.get("weight_decay", 0.0))  # fmt: skip
    trainable = [p for p in fusion.model.parameters() if p.requires_grad]
    hashes, losses, seconds = [], [], []
    for step, indices in enumerate(batch_order(len(dataset), stage["batch_size"], steps, seed)):
        batch = collator([dataset[i] for i in indices])
        hashes.append(batch_hash(batch))
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * schedule(step, steps)
        loss = fusion.loss(batch)
        if not torch.isfinite(loss):
            raise ValueError(f"{fusion.name}: non-finite loss at step {step + 1}; lower the learning rate.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        losses.append(round(loss.item(), 4))
        if on_step is not None:
            on_step(step + 1)
    return {"batch_hashes": hashes, "losses": losses, "seconds_per_step": statistics.median(seconds)}


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
                       set_stage2, set_stage3, seed_offset: int = 0) -> dict:
    """What every run of a study does once its model is built: stage 2 on the shared captions, stage 3 on the shared
    chats (scored on the checkpoint evaluation at `eval_settings["checkpoints"]` points), then every evaluation, the
    linear probe of the encoder (hive-shapes) and the run's cost.

    Args:
        fusion (`HiveAblationFusion`): the model.
        shared, out (`Path`): the shared folder and the run's folder.
        stage2, stage3 (`dict`): the training loop's settings of each stage.
        eval_settings (`dict`): the study's evaluation settings.
        seed (`int`): fixes the batch order (with `seed_offset`, which keeps two studies' orders apart).
        clock (`tuple`): `start_clock()`, taken before the model was built.
        set_stage2, set_stage3 (`Callable[[], dict]`): set what trains in each stage; return the parameter counts.

    Returns:
        `{"parameters", "stages", "curve", "final", "linear_probe" (hive-shapes), "timing", "memory"}`.
    """
    meta, processor, captions, chats = shared_inputs(shared)
    result = {"parameters": {"stage2": set_stage2()}}
    collator = HiveCaptionCollator(processor, prompt=meta["caption_prompt"], max_length=meta["max_length"]["stage2"])
    trained = {"stage2": train_stage(fusion, captions, collator, stage2, seed * 1000 + seed_offset + 2)}
    result["parameters"]["stage3"] = set_stage3()
    checkpoints = sorted({round(stage3["steps"] * k / eval_settings["checkpoints"]) for k in range(eval_settings["checkpoints"] + 1)})
    curve = []

    def checkpoint(step: int) -> None:
        if step in checkpoints:
            validation = meta["validation"]
            scores = evaluate_fusion(fusion, processor, [validation], out / "checkpoints" / f"step-{step}", eval_settings,
                                     eval_settings["validation_limit"])  # fmt: skip
            curve.append({"step": step, **scores[validation["label"]]})

    checkpoint(0)
    collator = HiveChatCollator(processor, max_length=meta["max_length"]["stage3"])
    trained["stage3"] = train_stage(fusion, chats, collator, stage3, seed * 1000 + seed_offset + 3, checkpoint)
    memory_method, baseline_rss, started = clock
    train_seconds = time.perf_counter() - started
    result.update(stages=trained, curve=curve)
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
    stage3 = study["stage3"]

    def set_stage3() -> dict:
        if stage3.get("lora_r"):
            torch.manual_seed(seed * 1000 + 4)
            fusion.add_lora(stage3["lora_r"], stage3["lora_alpha"], stage3["lora_dropout"])
        return fusion.set_stage(3, train_vision=stage3["train_vision"], train_llm=study["train_llm"], pretrain_llm=study["pretrain_llm"])

    def set_stage2() -> dict:
        return fusion.set_stage(2, train_vision=study["stage2"]["train_vision"], pretrain_llm=study["pretrain_llm"])

    result = {"fusion": name, "seed": seed, "study": study, "num_image_tokens": fusion.num_image_tokens, "readout": fusion.readout}
    result.update(train_and_evaluate(fusion, shared, out, study["stage2"], stage3, study["eval"], seed, clock, set_stage2, set_stage3))
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
