"""HIVE against transformers' LLaVA on identical backbones: every measure of the performance issue, in one run; and
HIVE's shared-softmax mode (the paper authors' fusion) against HIVE's gated blocks at the same connections.

All three models share the encoder, LLM and LM head weights (random) and the prompt text; only the fusion differs.
Every timed measure alternates the models' repetitions and reports medians.

Example:
    >>> from hive_vlm.bench.benchmark import run_benchmark
    >>> result = run_benchmark("toy", device="cpu", dtype="float32", repeats=2)
    >>> result["kv_cache_ratio"]
"""

import os
import platform
import time
from collections.abc import Callable

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .compiled import (
    compile_config,
    compiled_call,
    compiled_result,
    largest_decode_batches,
    measure_static_decode,
    measure_train_sweep,
    subset,
    sweep_batch_limit,
    sweep_budget,
    sweep_result,
)
from .flops import hive_prefill_flops, hive_stage2_step_flops
from .measures import copy_bytes_per_second, copy_probe_tasks, interleaved, matmul_flops_per_second, matmul_probe_tasks, median
from .phases import (
    decode_one_step,
    freeze_for_stage2,
    hive_sides,
    measure_decode,
    measure_prefill,
    measure_train_step,
    prefill_for_decode,
    stage2_step_maker,
)
from .models import bench_batch, build_models, build_shared_softmax
from .roofline import decode_weight_bytes, probe_bytes, roofline_result
from .sizes import BENCH_SIZES, HiveBenchSize


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODELS = ("hive", "llava", "shared_softmax")

# key -> (comparison, bound, what it measures); the order of the table.
TARGETS = {
    "ttft_ratio": ("<=", 0.6, "time to first token, whole (HIVE/LLaVA)"),
    "llm_prefill_ratio": ("<=", 0.2, "prefill, LLM side only (HIVE/LLaVA)"),
    "decode_ratio_576": (">=", 1.0, "decode tokens/s, 576 image tokens (HIVE/LLaVA)"),
    "decode_ratio_2880": (">=", 1.5, "decode tokens/s, 2,880 image tokens (HIVE/LLaVA)"),
    "train_step_ratio": ("<=", 0.4, "stage-2 step time (HIVE/LLaVA)"),
    "train_memory_ratio": ("<=", 0.5, "stage-2 step peak memory (HIVE/LLaVA)"),
    "kv_cache_ratio": ("<=", 0.4, "KV-cache bytes after prefill (HIVE/LLaVA)"),
    "cross_kv_cache_speedup": (">=", 3.0, "decode step, recomputed / cached cross K/V"),
    "prefill_flops_fraction_of_peak": (">=", 0.5, "HIVE prefill FLOP/s / matmul peak"),
}
RESULT_KEYS = tuple(TARGETS)
# shared-softmax against the gated blocks, same connections: key -> (comparison, bound, what it measures). The issue's
# bound: it should cost no more than the gated blocks.
SHARED_SOFTMAX_TARGETS = {
    "ttft_ratio": ("<=", 1.0, "time to first token, whole"),
    "llm_prefill_ratio": ("<=", 1.0, "prefill, LLM side only"),
    "fusion_ratio": ("<=", 1.0, "fusion alone (projectors + image K/V)"),
    "decode_ratio_576": (">=", 1.0, "decode tokens/s, 576 image tokens"),
    "decode_ratio_2880": (">=", 1.0, "decode tokens/s, 2,880 image tokens"),
    "train_step_ratio": ("<=", 1.0, "stage-2 step time"),
    "train_memory_ratio": ("<=", 1.0, "stage-2 step peak memory"),
    "kv_cache_ratio": ("<=", 1.0, "KV-cache bytes after prefill"),
    "trainable_ratio": ("<=", 1.0, "stage-2 trainable parameters"),
}


def target_met(key: str, value: float, targets: dict = TARGETS) -> bool:
    comparison, bound, _ = targets[key]
    return value <= bound if comparison == "<=" else value >= bound


def describe_machine(device: torch.device) -> dict:
    processor = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            processor = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), processor)
    except OSError:
        pass
    cuda = {}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        cuda = {"cuda": torch.version.cuda, "device_memory_bytes": properties.total_memory, "device_capability": f"{properties.major}.{properties.minor}"}
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": processor,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else processor,
        **cuda,
    }


def run_benchmark(size: str | HiveBenchSize = "small", device: str | None = None, dtype: str | None = None, repeats: int = 5, seed: int = 0,
                  threads: int | None = None, log: Callable[[str], None] | None = None, compile: bool = False, compile_backend: str = "inductor",
                  sweep: bool = False, memory_budget_gib: float | None = None) -> dict:  # fmt: skip
    """Runs every measure and returns the result: the nine ratio keys at the top level, the raw numbers beside them.

    Args:
        size: a key of `BENCH_SIZES` ("toy", "small", "base") or a `HiveBenchSize`.
        device: "cpu" or "cuda" (defaults to cuda when available).
        dtype: "float32" or "bfloat16" (defaults to bfloat16 on cuda, float32 on cpu).
        repeats: timed repetitions per measure and model (after one warm-up); medians are reported.
        seed: seeds the random weights and inputs.
        threads: CPU threads for torch (`torch.set_num_threads`). None: 1 on cpu, where one thread gives stable timings
            on a shared machine (several threads on oversubscribed cores stall at every parallel region); torch's own
            choice on cuda. Pass the core count on a dedicated CPU machine.
        log: called with a line as each measure finishes.
        compile: also time decode steps compiled as `generate(cache_implementation="static")` compiles them
            (`compiled.compile_config`), from static caches, every model in the same rounds (`result["compiled"]`).
        compile_backend: torch.compile's backend for `compile` ("inductor", what users get; "eager" only traces).
        sweep: also run the batch sweep (`result["sweep"]`): decode tokens/s at batch 1, 8, 32 and each model's largest
            fitting batch (compiled when `compile`), stage-2 samples/s at each model's largest fitting batch.
        memory_budget_gib: the memory each model gets in the sweep. Default: the size's `cpu_memory_budget_gib` on
            cpu; the device's memory on cuda (running out of it ends the search).

    Example:
        ```python
        >>> result = run_benchmark("small", device="cpu", repeats=5)
        >>> result["kv_cache_ratio"]
        ```
    """
    log = log or (lambda line: None)
    if isinstance(size, str):
        if size not in BENCH_SIZES:
            raise ValueError(f"Unknown benchmark size {size!r}; choose one of {sorted(BENCH_SIZES)}.")
        size = BENCH_SIZES[size]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}.")
    dtype_name = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}.")
    dtype = DTYPES[dtype_name]
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    if threads is None and device.type == "cpu":
        threads = 1
    if memory_budget_gib is not None and memory_budget_gib <= 0:
        raise ValueError(f"memory_budget_gib must be positive, got {memory_budget_gib}.")
    if memory_budget_gib is None and device.type == "cpu":
        memory_budget_gib = size.cpu_memory_budget_gib
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)

    started, load_before = time.perf_counter(), os.getloadavg()
    hive, llava = build_models(size, device, dtype, seed)
    shared = build_shared_softmax(hive, device, dtype)
    log(f"built HIVE ({sum(p.numel() for p in hive.parameters()):,} parameters), LLaVA ({sum(p.numel() for p in llava.parameters()):,}) "
        f"and HIVE shared-softmax ({sum(p.numel() for p in shared.parameters()):,}) on {device}, {dtype_name}")  # fmt: skip
    batch = bench_batch(size, 1, device=device, dtype=dtype, seed=seed)
    long_batch_images = size.long_context_images
    matmul_tasks = matmul_probe_tasks(device, dtype, size.matmul_sizes)
    copy_nbytes = probe_bytes(device)
    models = {"hive": hive, "llava": llava, "shared_softmax": shared}
    with torch.inference_mode():
        prefill = measure_prefill(hive, llava, batch, repeats, device, matmul_tasks, shared)
        log("prefill measured")
        decode_short = measure_decode(hive, llava, batch, 1, size.decode_tokens, repeats, device, size.decode_batch_size, recompute=True,
                                      shared=shared)  # fmt: skip
        # The copy probe gets rounds of its own: a copy that large just before a model's decode run would evict its
        # weights from the CPU's caches, against whichever model follows it.
        copy_times = interleaved(copy_probe_tasks(device, copy_nbytes), repeats)["copy"]
        log("decode at one image measured")
        decode_long = measure_decode(hive, llava, batch, long_batch_images, size.decode_tokens, repeats, device, size.decode_batch_size,
                                     shared=shared)  # fmt: skip
        log(f"decode at {long_batch_images} images measured")
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            hive(input_ids=batch.input_ids, pixel_values=batch.pixel_values, use_cache=True, logits_to_keep=1)
        prefills = {images: {name: prefill_for_decode(model, batch, images, is_llava=name == "llava") for name, model in models.items()}
                    for images in (1, long_batch_images)}  # fmt: skip
        weight_bytes = {
            name: decode_weight_bytes(model, lambda m=model, p=prefills[1][name]: decode_one_step(m, p)) for name, model in models.items()
        }
        compiled = sweep_decode = None
        config = compile_config(device, compile_backend) if compile else None
        calls = {name: compiled_call(model, name, config) for name, model in models.items()} if compile else None
        # Each model compiles once per cache shape (image count, batch), within torch's limit of 8 per function. The
        # limit is raised for the case of a graph break, whose resumed code would be shared by all models again.
        with torch._dynamo.config.patch(recompile_limit=64):
            if compile:
                compiled = {
                    key: measure_static_decode(models, prefills[images], size.decode_tokens, repeats, device, dict.fromkeys(models, 1), calls)
                    for images, key in ((1, "576"), (long_batch_images, "2880"))
                }
                log("compiled decode measured")
            if sweep:  # HIVE's gated blocks against LLaVA (the shared-softmax column stays at batch 1)
                swept = {name: models[name] for name in ("hive", "llava")}
                budget = sweep_budget(device, None if memory_budget_gib is None else int(memory_budget_gib * 2**30))
                limit = sweep_batch_limit(size, device)
                largest = largest_decode_batches(swept, prefills[1], size.decode_tokens, device, budget, limit)
                batches = {str(b): dict.fromkeys(swept, b) for b in (1, 8, 32) if b <= limit}
                batches["largest"] = {name: found["batch"] for name, found in largest.items()}
                # A batch measured already (batch 1 compiled above; a largest batch equal to a fixed one) is not run again.
                measured = {tuple(dict.fromkeys(swept, 1).items()): subset(compiled["576"], swept)} if compiled else {}
                sweep_decode = {}
                for key, sizes in batches.items():
                    if tuple(sizes.items()) not in measured:
                        measured[tuple(sizes.items())] = measure_static_decode(swept, prefills[1], size.decode_tokens, repeats, device, sizes, calls)
                    sweep_decode[key] = {**measured[tuple(sizes.items())], "batch_sizes": sizes}
                log(f"decode batch sweep measured (largest batches {batches['largest']})")
    train = measure_train_step(hive, llava, size, repeats, device, dtype, seed, matmul_tasks, shared)
    log("training step measured")
    train_sweep = None
    if sweep:
        freeze_for_stage2(hive_sides(hive, shared), llava)
        for model in models.values():
            model.train()
        make_step = stage2_step_maker(hive, llava, size, device, dtype, seed, shared)
        train_sweep = measure_train_sweep(swept, make_step, repeats, device, budget, limit)
        for model in models.values():
            model.eval()
        log(f"stage-2 batch sweep measured (largest batches {({name: found['batch'] for name, found in train_sweep['largest'].items()})})")

    matmul = {"prefill": matmul_flops_per_second(prefill["times"]["ttft"]), "train_step": matmul_flops_per_second(train["times"])}
    times = {
        **{measure: {name: values for name, values in sides.items() if not name.startswith("matmul_")} for measure, sides in prefill["times"].items()},
        "decode_step_576": {name: decode_short[name] for name in MODELS},
        "decode_step_2880": {name: decode_long[name] for name in MODELS},
        "decode_step_576_batched": {name: decode_short[f"{name}_batched"] for name in MODELS if f"{name}_batched" in decode_short},
        "decode_step_2880_batched": {name: decode_long[f"{name}_batched"] for name in MODELS if f"{name}_batched" in decode_long},
        "decode_step_cross_kv": {
            "cached": decode_short["hive_cached"],
            "recompute": decode_short["hive_recompute"],
            "recompute_with_encoder": decode_short["hive_recompute_encoder"],
        },
        "train_step": {name: train["times"][name] for name in MODELS},
        "matmul": {f"{n}_during_{measure}": sides[f"matmul_{n}"] for measure, sides in (("prefill", prefill["times"]["ttft"]), ("train_step", train["times"])) for n in size.matmul_sizes},
    }
    medians = {measure: {name: median(values) for name, values in sides.items()} for measure, sides in times.items()}
    tokens_per_second = {
        f"{tokens}{suffix}": {name: batch_size / seconds for name, seconds in medians[f"decode_step_{tokens}{suffix}"].items()}
        for tokens in ("576", "2880")
        for suffix, batch_size in (("", 1), ("_batched", size.decode_batch_size))
        if medians[f"decode_step_{tokens}{suffix}"]
    }
    prefill_flops = hive_prefill_flops(hive.config, size.text_tokens)
    train_flops = hive_stage2_step_flops(hive.config, size.text_tokens, size.train_batch_size)
    peak = {measure: max(values.values()) for measure, values in matmul.items()}
    prefill_flops_per_second = sum(prefill_flops.values()) / medians["ttft"]["hive"]
    train_flops_per_second = sum(train_flops.values()) / medians["train_step"]["hive"]
    kv_bytes = prefill["kv_cache_bytes"]
    roofline = roofline_result(size, models, prefills, weight_bytes, copy_bytes_per_second(copy_times, copy_nbytes), copy_nbytes,
                               medians, compiled)  # fmt: skip
    roofline["copy_timings_s"] = copy_times
    roofline["prefill_fraction_of_matmul_peak"] = prefill_flops_per_second / peak["prefill"]
    roofline["train_step_fraction_of_matmul_peak"] = train_flops_per_second / peak["train_step"]

    shared_softmax = {
        "ttft_ratio": medians["ttft"]["shared_softmax"] / medians["ttft"]["hive"],
        "llm_prefill_ratio": medians["llm_prefill"]["shared_softmax"] / medians["llm_prefill"]["hive"],
        "fusion_ratio": medians["fusion"]["shared_softmax"] / medians["fusion"]["hive"],
        "decode_ratio_576": tokens_per_second["576"]["shared_softmax"] / tokens_per_second["576"]["hive"],
        "decode_ratio_2880": tokens_per_second["2880"]["shared_softmax"] / tokens_per_second["2880"]["hive"],
        "train_step_ratio": medians["train_step"]["shared_softmax"] / medians["train_step"]["hive"],
        "train_memory_ratio": train["peak_bytes"]["shared_softmax"] / train["peak_bytes"]["hive"],
        "kv_cache_ratio": kv_bytes["shared_softmax"]["total"] / kv_bytes["hive"]["total"],
        "trainable_ratio": train["trainable_parameters"]["shared_softmax"] / train["trainable_parameters"]["hive"],
    }
    result = {
        "ttft_ratio": medians["ttft"]["hive"] / medians["ttft"]["llava"],
        "llm_prefill_ratio": medians["llm_prefill"]["hive"] / medians["llm_prefill"]["llava"],
        "decode_ratio_576": tokens_per_second["576"]["hive"] / tokens_per_second["576"]["llava"],
        "decode_ratio_2880": tokens_per_second["2880"]["hive"] / tokens_per_second["2880"]["llava"],
        "train_step_ratio": medians["train_step"]["hive"] / medians["train_step"]["llava"],
        "train_memory_ratio": train["peak_bytes"]["hive"] / train["peak_bytes"]["llava"],
        "kv_cache_ratio": kv_bytes["hive"]["total"] / kv_bytes["llava"]["total"],
        "cross_kv_cache_speedup": medians["decode_step_cross_kv"]["recompute"] / medians["decode_step_cross_kv"]["cached"],
        "prefill_flops_fraction_of_peak": prefill_flops_per_second / peak["prefill"],
        "targets": {key: {"comparison": comparison, "bound": bound, "measure": text} for key, (comparison, bound, text) in TARGETS.items()},
        "shared_softmax": shared_softmax,  # shared-softmax / gated blocks, same connections
        "shared_softmax_targets": {key: {"comparison": c, "bound": b, "measure": text} for key, (c, b, text) in SHARED_SOFTMAX_TARGETS.items()},
        "timings_s": times,
        "medians_s": medians,
        "decode_tokens_per_s": tokens_per_second,
        "kv_cache_bytes": kv_bytes,
        "train_memory_bytes": {key: train[key] for key in ("peak_bytes", "resident_bytes", "peak_above_resident_bytes")},
        "flops": {
            "hive_prefill": prefill_flops,
            "hive_prefill_counted_by_torch": counter.get_total_flops(),
            "hive_prefill_flops_per_s": prefill_flops_per_second,
            "matmul_flops_per_s_by_size": {measure: {str(n): value for n, value in values.items()} for measure, values in matmul.items()},
            "matmul_peak_flops_per_s": peak,
            "hive_train_step": train_flops,
            "hive_train_step_counted_by_torch": train["hive_flops_counted_by_torch"],
            "hive_train_step_flops_per_s": train_flops_per_second,
            "hive_train_step_fraction_of_peak": train_flops_per_second / peak["train_step"],
        },
        "roofline": roofline,
        **({"compiled": compiled_result(compiled, config, medians, roofline)} if compiled else {}),
        **({"sweep": sweep_result(sweep_decode, train_sweep, largest, budget, limit, roofline, hive.config, size, peak)} if sweep else {}),
        "parameters": {
            "hive": sum(p.numel() for p in hive.parameters()),
            "llava": sum(p.numel() for p in llava.parameters()),
            "shared_softmax": sum(p.numel() for p in shared.parameters()),
            "trainable_stage2": train["trainable_parameters"],
        },
        "sizes": {
            "size": size.name,
            "image_tokens": size.image_tokens,
            "long_context_image_tokens": size.long_context_image_tokens,
            "text_tokens": size.text_tokens,
            "llava_prompt_tokens": size.text_tokens + size.image_tokens,
            "decode_tokens": size.decode_tokens,
            "decode_batch_size": size.decode_batch_size,
            "train_batch_size": size.train_batch_size,
            "vision_config": dict(size.vision),
            "text_config": dict(size.text),
            "cross_attention_layers": hive.config.cross_attention_layers,
            "hierarchy_mode": hive.config.hierarchy_mode,
            "cross_attention_num_key_value_heads": hive.config.cross_attention_num_key_value_heads,
        },
        "machine": describe_machine(device),
        "settings": {
            "device": str(device),
            "dtype": dtype_name,
            "repeats": repeats,
            "seed": seed,
            "attn_implementation": {"hive": hive.config._attn_implementation, "llava": llava.config.text_config._attn_implementation},
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "elapsed_s": time.perf_counter() - started,
        },
    }
    return result
