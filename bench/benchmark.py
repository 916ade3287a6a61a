"""HIVE against transformers' LLaVA on identical backbones: every measure of the performance issue, in one run; and
HIVE's shared-softmax mode (the paper authors' fusion) against HIVE's gated blocks at the same connections.

All three models share the encoder, LLM and LM head weights (random) and the prompt text; only the fusion differs.
Every timed measure alternates the models' repetitions and reports medians.

Example:
    >>> from hive_vlm.bench.benchmark import run_benchmark, format_table
    >>> result = run_benchmark("toy", device="cpu", dtype="float32", repeats=2)
    >>> print(format_table(result))
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
    largest_decode_batches,
    measure_static_decode,
    measure_train_sweep,
    sweep_batch_limit,
    sweep_budget,
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
from .models import bench_batch, build_models, build_shared_softmax, cache_bytes
from .roofline import bandwidth_fraction, cache_bytes_per_position, decode_step_bytes, decode_weight_bytes, probe_bytes
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


def subset(measure: dict, models: dict) -> dict:
    """A `measure_static_decode` result restricted to `models`."""
    return {part: {name: value for name, value in values.items() if name in models} for part, values in measure.items()}


IMAGE_COUNTS = ("576", "2880")  # the issue's names for one image's tokens and five images' worth (at every size)


def roofline_result(size: HiveBenchSize, models: dict, prefills: dict, weight_bytes: dict, bytes_per_second: float, probe_nbytes: int,
                    medians: dict, compiled: dict | None) -> dict:  # fmt: skip
    """Bytes per decode step (batch 1) and the fraction of the copy-bandwidth limit each model's eager (and compiled)
    step reaches, at both image counts."""
    steps_bytes, per_position, image_bytes = {}, {}, {}
    for images, key in zip(prefills, IMAGE_COUNTS):
        per_position[key], image_bytes[key], steps_bytes[key] = {}, {}, {}
        for name in models:
            cache = prefills[images][name][0]
            held = cache_bytes(cache)
            per_position[key][name] = cache_bytes_per_position(held, cache.get_seq_length())
            image_bytes[key][name] = held["cross_attention"]
            steps_bytes[key][name] = decode_step_bytes(weight_bytes[name], per_position[key][name], image_bytes[key][name], cache.get_seq_length(),
                                                       size.decode_tokens)  # fmt: skip
    fractions = {"eager": {key: {name: bandwidth_fraction(steps_bytes[key][name], bytes_per_second, medians[f"decode_step_{key}"][name])
                                 for name in models} for key in IMAGE_COUNTS}}  # fmt: skip
    if compiled:
        fractions["compiled"] = {
            key: {name: bandwidth_fraction(steps_bytes[key][name], bytes_per_second, median(compiled[key]["times"][name])) for name in models}
            for key in IMAGE_COUNTS
        }
    return {
        "copy_bytes_per_s": bytes_per_second,  # bytes read plus written
        "copy_probe_bytes": probe_nbytes,
        "decode_weight_bytes": weight_bytes,
        "decode_cache_bytes_per_position": per_position,
        "decode_image_bytes": image_bytes,
        "decode_step_bytes": steps_bytes,
        "decode_fraction_of_bandwidth": fractions,
    }


def compiled_result(compiled: dict, config, medians: dict, roofline: dict) -> dict:
    """The compiled decode measures: raw and median step times, tokens/s, ratios, speed-up over the eager steps,
    compile times and what torch's compiler counted."""
    compiled_medians = {key: {name: median(values) for name, values in measure["times"].items()} for key, measure in compiled.items()}
    tokens = {key: {name: 1 / seconds for name, seconds in sides.items()} for key, sides in compiled_medians.items()}
    return {
        "settings": {"mode": config.mode, "backend": config.backend, "fullgraph": config.fullgraph, "dynamic": config.dynamic,
                     "cache": "StaticCache",
                     "what": "decode steps (generate runs the prefill eagerly), each model entered through its own function"},  # fmt: skip
        "ratios": {
            **{f"decode_ratio_{key}": tokens[key]["hive"] / tokens[key]["llava"] for key in compiled},
            **{f"shared_softmax_decode_ratio_{key}": tokens[key]["shared_softmax"] / tokens[key]["hive"] for key in compiled},
        },
        "speedup_over_eager": {key: {name: medians[f"decode_step_{key}"][name] / seconds for name, seconds in sides.items()}
                               for key, sides in compiled_medians.items()},  # fmt: skip
        "decode_fraction_of_bandwidth": roofline["decode_fraction_of_bandwidth"]["compiled"],
        "decode_tokens_per_s": tokens,
        "timings_s": {f"decode_step_{key}": measure["times"] for key, measure in compiled.items()},
        "medians_s": {f"decode_step_{key}": sides for key, sides in compiled_medians.items()},
        "compile_s": {key: measure["compile_s"] for key, measure in compiled.items()},
        "dynamo": {key: measure["dynamo"] for key, measure in compiled.items()},
    }


def sweep_result(decode: dict, train: dict, largest_decode: dict, budget: int, limit: int, roofline: dict, config, size: HiveBenchSize,
                 peak: dict) -> dict:  # fmt: skip
    """The batch sweep: decode tokens/s and the fraction of the bandwidth limit at each batch (576 image tokens), and
    stage-2 samples/s at each model's largest fitting batch."""
    key = IMAGE_COUNTS[0]
    decode_rows = {}
    for batches, measure in decode.items():
        sizes = measure["batch_sizes"]
        medians = {name: median(values) for name, values in measure["times"].items()}
        step_bytes = {
            name: roofline["decode_weight_bytes"][name]
            + sizes[name] * (roofline["decode_step_bytes"][key][name] - roofline["decode_weight_bytes"][name])
            for name in medians
        }
        tokens = {name: sizes[name] / seconds for name, seconds in medians.items()}
        decode_rows[batches] = {
            "batch_sizes": sizes,
            "tokens_per_s": tokens,
            "hive_llava_ratio": tokens["hive"] / tokens["llava"],
            "step_bytes": step_bytes,
            "fraction_of_bandwidth": {name: bandwidth_fraction(step_bytes[name], roofline["copy_bytes_per_s"], medians[name]) for name in medians},
            "timings_s": measure["times"],
            "compile_s": measure["compile_s"],
        }
    train_medians = {name: median(values) for name, values in train["times"].items()}
    train_batches = {name: found["batch"] for name, found in train["largest"].items()}
    samples = {name: train_batches[name] / seconds for name, seconds in train_medians.items()}
    hive_flops = sum(hive_stage2_step_flops(config, size.text_tokens, train_batches["hive"]).values())
    return {
        "memory_budget_bytes": budget,
        "batch_limit": limit,
        "decode": decode_rows,
        "decode_largest_search": largest_decode,
        "train": {
            "batch_sizes": train_batches,
            "samples_per_s": samples,
            "hive_llava_ratio": samples["hive"] / samples["llava"],
            "hive_fraction_of_matmul_peak": hive_flops / train_medians["hive"] / peak["train_step"],
            "timings_s": train["times"],
            "largest_search": train["largest"],
        },
    }


def fixed_width(lines: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return rendered


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def _mib(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,.0f} B"


def format_table(result: dict) -> str:
    """The nine measures as a fixed-width table: HIVE, LLaVA (or the reference), ratio, target, verdict."""
    medians, kv, memory, flops = result["medians_s"], result["kv_cache_bytes"], result["train_memory_bytes"], result["flops"]
    tokens = result["decode_tokens_per_s"]
    long_tokens = result["sizes"]["long_context_image_tokens"]
    rows = {
        "ttft_ratio": (_milliseconds(medians["ttft"]["hive"]), _milliseconds(medians["ttft"]["llava"])),
        "llm_prefill_ratio": (_milliseconds(medians["llm_prefill"]["hive"]), _milliseconds(medians["llm_prefill"]["llava"])),
        "decode_ratio_576": (f"{tokens['576']['hive']:,.1f} tok/s", f"{tokens['576']['llava']:,.1f} tok/s"),
        "decode_ratio_2880": (f"{tokens['2880']['hive']:,.1f} tok/s", f"{tokens['2880']['llava']:,.1f} tok/s"),
        "train_step_ratio": (_milliseconds(medians["train_step"]["hive"]), _milliseconds(medians["train_step"]["llava"])),
        "train_memory_ratio": (_mib(memory["peak_bytes"]["hive"]), _mib(memory["peak_bytes"]["llava"])),
        "kv_cache_ratio": (_mib(kv["hive"]["total"]), _mib(kv["llava"]["total"])),
        "cross_kv_cache_speedup": (
            f"cached {_milliseconds(medians['decode_step_cross_kv']['cached'])}/step",
            f"recompute {_milliseconds(medians['decode_step_cross_kv']['recompute'])}/step",
        ),
        "prefill_flops_fraction_of_peak": (
            f"{flops['hive_prefill_flops_per_s'] / 1e9:,.1f} GFLOP/s",
            f"peak {flops['matmul_peak_flops_per_s']['prefill'] / 1e9:,.1f} GFLOP/s",
        ),
    }
    labels = {key: text for key, (_, _, text) in TARGETS.items()}
    labels["decode_ratio_2880"] = labels["decode_ratio_2880"].replace("2,880", f"{long_tokens:,}")
    labels["decode_ratio_576"] = labels["decode_ratio_576"].replace("576", f"{result['sizes']['image_tokens']:,}")
    header = ("measure", "HIVE", "LLaVA / reference", "value", "target", "")
    lines = [header]
    for key in RESULT_KEYS:
        comparison, bound, _ = TARGETS[key]
        value = result[key]
        lines.append((labels[key], *rows[key], f"{value:.3f}", f"{comparison} {bound:g}", "met" if target_met(key, value) else "MISSED"))
    rendered = fixed_width(lines)
    settings, sizes, machine = result["settings"], result["sizes"], result["machine"]
    rendered.append("")
    rendered.append(
        f"size {sizes['size']} | {settings['device']} {settings['dtype']} | {machine['device_name']} | "
        f"{machine['torch_threads']} threads | repeats {settings['repeats']} | {settings['elapsed_s']:.0f} s"
    )
    rendered.append(
        f"shared encoder {_milliseconds(medians['encoder']['hive'])} (HIVE) / {_milliseconds(medians['encoder']['llava'])} (LLaVA); "
        f"fusion {_milliseconds(medians['fusion']['hive'])} (HIVE projectors + K/V) / {_milliseconds(medians['fusion']['llava'])} (LLaVA projector)"
    )
    if "576_batched" in tokens:
        rendered.append(
            f"decode at batch {sizes['decode_batch_size']}: HIVE/LLaVA tokens/s {tokens['576_batched']['hive'] / tokens['576_batched']['llava']:.3f} "
            f"({sizes['image_tokens']:,} image tokens), {tokens['2880_batched']['hive'] / tokens['2880_batched']['llava']:.3f} ({long_tokens:,})"
        )
    rendered.append(
        f"decode step with the encoder rerun too: {_milliseconds(medians['decode_step_cross_kv']['recompute_with_encoder'])} "
        f"({medians['decode_step_cross_kv']['recompute_with_encoder'] / medians['decode_step_cross_kv']['cached']:.1f}x the cached step); "
        f"HIVE stage-2 step at {flops['hive_train_step_fraction_of_peak']:.1%} of the matmul peak"
    )
    rendered.append(roofline_line(result))
    rendered += ["", shared_softmax_table(result)]
    if "compiled" in result:
        rendered += ["", compiled_table(result)]
    if "sweep" in result:
        rendered += ["", sweep_table(result)]
    return "\n".join(rendered)


def _percent(fraction: float) -> str:
    return f"{fraction:.1%}" if fraction >= 0.001 else f"{fraction:.2e}"


def roofline_line(result: dict) -> str:
    """Bytes per decode step and the fraction of the copy-bandwidth limit the eager batch-1 steps reach."""
    roofline = result["roofline"]
    fractions = roofline["decode_fraction_of_bandwidth"]["eager"]
    return (
        f"decode at batch 1 against the bandwidth limit (copy {roofline['copy_bytes_per_s'] / 1e9:,.1f} GB/s, read + written): "
        f"{_mib(roofline['decode_step_bytes']['576']['hive'])}/step HIVE, {_mib(roofline['decode_step_bytes']['576']['llava'])} LLaVA; "
        f"reached {_percent(fractions['576']['hive'])} HIVE, {_percent(fractions['576']['llava'])} LLaVA "
        f"({_percent(fractions['2880']['hive'])}, {_percent(fractions['2880']['llava'])} "
        f"at {result['sizes']['long_context_image_tokens']:,} image tokens)"
    )


def compiled_table(result: dict) -> str:
    """The compiled decode steps: tokens/s of each model, HIVE/LLaVA, each model's speed-up over its eager step, the
    fraction of the bandwidth limit reached."""
    compiled, sizes = result["compiled"], result["sizes"]
    tokens, speedup, fractions = compiled["decode_tokens_per_s"], compiled["speedup_over_eager"], compiled["decode_fraction_of_bandwidth"]
    settings = compiled["settings"]
    header = ("compiled decode, static cache, batch 1", "HIVE", "LLaVA", "HIVE/LLaVA", "vs eager (HIVE, LLaVA)", "of bandwidth limit")
    lines = [header]
    for key, image_tokens in (("576", sizes["image_tokens"]), ("2880", sizes["long_context_image_tokens"])):
        lines.append((
            f"decode tokens/s, {image_tokens:,} image tokens",
            f"{tokens[key]['hive']:,.1f} tok/s",
            f"{tokens[key]['llava']:,.1f} tok/s",
            f"{compiled['ratios'][f'decode_ratio_{key}']:.3f}",
            f"{speedup[key]['hive']:.2f}x, {speedup[key]['llava']:.2f}x",
            f"{_percent(fractions[key]['hive'])}, {_percent(fractions[key]['llava'])}",
        ))  # fmt: skip
    rendered = fixed_width(lines)
    compile_s = compiled["compile_s"]["576"]
    rendered.append(
        f"torch.compile mode {settings['mode']!r}, backend {settings['backend']!r}, dynamic {settings['dynamic']}; first run (compile) "
        f"{compile_s['hive']:.1f} s HIVE, {compile_s['llava']:.1f} s LLaVA, not timed; shared-softmax/gated tokens/s "
        f"{compiled['ratios']['shared_softmax_decode_ratio_576']:.3f}, {compiled['ratios']['shared_softmax_decode_ratio_2880']:.3f}; "
        f"graph breaks in a decode step: HIVE {compiled['dynamo']['576']['hive']['graph_breaks']}, "
        f"shared-softmax {compiled['dynamo']['576']['shared_softmax']['graph_breaks']}, LLaVA {compiled['dynamo']['576']['llava']['graph_breaks']}"
    )
    return "\n".join(rendered)


def sweep_table(result: dict) -> str:
    """Decode tokens/s over the batch sweep (one image), and stage-2 samples/s at each model's largest fitting batch."""
    sweep = result["sweep"]
    mode = "compiled" if "compiled" in result else "eager"
    header = (f"decode batch sweep ({mode}, static cache)", "HIVE", "LLaVA", "HIVE/LLaVA", "of bandwidth limit (HIVE, LLaVA)")
    lines = [header]
    for key, row in sweep["decode"].items():
        batches = row["batch_sizes"]
        label = f"batch {key}" if key != "largest" else f"largest fitting batch (HIVE {batches['hive']}, LLaVA {batches['llava']})"
        lines.append((
            label,
            f"{row['tokens_per_s']['hive']:,.1f} tok/s",
            f"{row['tokens_per_s']['llava']:,.1f} tok/s",
            f"{row['hive_llava_ratio']:.3f}",
            f"{_percent(row['fraction_of_bandwidth']['hive'])}, {_percent(row['fraction_of_bandwidth']['llava'])}",
        ))  # fmt: skip
    rendered = fixed_width(lines)
    train = sweep["train"]
    rendered.append(
        f"stage-2 at the largest batch in {_mib(sweep['memory_budget_bytes'])} (at most {sweep['batch_limit']}): "
        f"HIVE batch {train['batch_sizes']['hive']}, {train['samples_per_s']['hive']:,.1f} samples/s; "
        f"LLaVA batch {train['batch_sizes']['llava']}, {train['samples_per_s']['llava']:,.1f} samples/s; "
        f"HIVE/LLaVA {train['hive_llava_ratio']:.3f}; HIVE at {_percent(train['hive_fraction_of_matmul_peak'])} of the matmul peak"
    )
    return "\n".join(rendered)


def shared_softmax_table(result: dict) -> str:
    """HIVE's shared-softmax mode against its gated blocks at the same connections: gated, shared-softmax, ratio,
    target (no more than the gated blocks), verdict."""
    medians, kv, memory, tokens = result["medians_s"], result["kv_cache_bytes"], result["train_memory_bytes"]["peak_bytes"], result["decode_tokens_per_s"]
    trainable = result["parameters"]["trainable_stage2"]
    sizes = result["sizes"]
    cells = {
        "ttft_ratio": {name: _milliseconds(medians["ttft"][name]) for name in ("hive", "shared_softmax")},
        "llm_prefill_ratio": {name: _milliseconds(medians["llm_prefill"][name]) for name in ("hive", "shared_softmax")},
        "fusion_ratio": {name: _milliseconds(medians["fusion"][name]) for name in ("hive", "shared_softmax")},
        "decode_ratio_576": {name: f"{tokens['576'][name]:,.1f} tok/s" for name in ("hive", "shared_softmax")},
        "decode_ratio_2880": {name: f"{tokens['2880'][name]:,.1f} tok/s" for name in ("hive", "shared_softmax")},
        "train_step_ratio": {name: _milliseconds(medians["train_step"][name]) for name in ("hive", "shared_softmax")},
        "train_memory_ratio": {name: _mib(memory[name]) for name in ("hive", "shared_softmax")},
        "kv_cache_ratio": {name: _mib(kv[name]["total"]) for name in ("hive", "shared_softmax")},
        "trainable_ratio": {name: f"{trainable[name]:,}" for name in ("hive", "shared_softmax")},
    }
    header = ("shared-softmax vs gated blocks", "gated", "shared-softmax", "ratio", "target", "")
    lines = [header]
    for key, (comparison, bound, text) in SHARED_SOFTMAX_TARGETS.items():
        text = text.replace("2,880", f"{sizes['long_context_image_tokens']:,}").replace("576", f"{sizes['image_tokens']:,}")
        value = result["shared_softmax"][key]
        verdict = "met" if target_met(key, value, SHARED_SOFTMAX_TARGETS) else "MISSED"
        lines.append((text, cells[key]["hive"], cells[key]["shared_softmax"], f"{value:.3f}", f"{comparison} {bound:g}", verdict))
    rendered = fixed_width(lines)
    rendered.append(f"same connections {sizes['cross_attention_layers']}, same encoder, LLM, head and projectors")
    return "\n".join(rendered)
