"""`hive bench --compile` and `--sweep`: decode steps compiled as `generate(cache_implementation="static")` compiles
them, from static caches, with every model in the same interleaved rounds; decode tokens/s over a batch sweep; stage-2
samples/s at the largest batch that fits each model in the same memory.

A decode measure starts from the batch-1 prefill the eager measures use (`phases.prefill_for_decode`), copied into a
`StaticCache` (repeated to the batch size), so every batch and both modes decode from the same cached states.
"""

import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, StaticCache

from modeling_hive.modeling_hive import HiveCrossAttentionCacheLayer

from .flops import hive_stage2_step_flops
from .measures import interleaved, largest_batch, median, peak_allocated_during, resident_training_bytes, tensor_bytes, timed
from .phases import decode_run
from .roofline import IMAGE_COUNTS, bandwidth_fraction
from .sizes import HiveBenchSize


def compile_config(device: torch.device, backend: str = "inductor") -> CompileConfig:
    """What `generate` compiles a decode step with: its default `CompileConfig` (mode "reduce-overhead", CUDA graphs)
    on CUDA; on the CPU the same settings without CUDA graphs (mode "default").

    One change: `dynamic=False` (generate's default is None). With None, a second cache shape of the same model makes
    its graph dynamic; with False each cache shape gets its own static graph, as a user's first `generate` does.
    """
    return CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default", backend=backend, dynamic=False)


def compiled_call(model, name: str, config: CompileConfig):
    """`model.__call__` compiled with `config`, as `model.get_compiled_call(config)` (what `generate` uses) compiles it,
    but entered through a function of its own per model.

    torch's compiler keeps its compiled graphs, and checks their guards on every call, per code object. Every
    transformers model's `forward` is entered through one shared output wrapper, so in one process the models' graphs
    would pile up on one code object: each step would check other models' guards first, and one model's shapes would
    make another's graphs dynamic. A user's process holds one model; a code object per model measures that.
    """

    def step(*args, **kwargs):
        return model(*args, **kwargs)

    step.__code__ = step.__code__.replace(co_name=f"decode_step_{name}")  # a new code object: its own compiled graphs
    return torch.compile(step, **config.to_dict())


def static_cache_from(cache, model, batch_size: int, max_cache_len: int) -> StaticCache:
    """A `StaticCache` of `max_cache_len` positions holding a batch-1 prefill's `cache` repeated `batch_size` times.

    The LLM's layers are written through `update` (so the static tensors are allocated, and marked for CUDA graphs,
    outside any compiled code); HIVE's image layers follow them, as a prefill leaves them.
    """
    static = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=max_cache_len)
    text_layers = [layer for layer in cache.layers if not isinstance(layer, HiveCrossAttentionCacheLayer)]
    for static_layer, layer in zip(static.layers, text_layers, strict=True):
        static_layer.update(layer.keys.repeat_interleave(batch_size, 0), layer.values.repeat_interleave(batch_size, 0))
    for layer in cache.layers[len(text_layers) :]:
        image = HiveCrossAttentionCacheLayer()
        mask = None if layer.image_mask is None else layer.image_mask.repeat_interleave(batch_size, 0)
        image.write(layer.keys.repeat_interleave(batch_size, 0), layer.values.repeat_interleave(batch_size, 0), mask)
        static.layers.append(image)
    return static


def static_cache_bytes(cache) -> int:
    """Bytes a static cache holds (allocated for its every position, used or not)."""
    return tensor_bytes(*(getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values", "image_mask")))


def dynamo_counts() -> dict:
    """Graphs compiled and graph breaks (by reason) counted by torch's compiler since `counters.clear()`."""
    return {
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": dict(counters["graph_break"]),
    }


def measure_static_decode(models: dict, prefills: dict, steps: int, repeats: int, device, batch_sizes: dict, calls: dict | None = None) -> dict:
    """Seconds per decode step of each model from a static cache, all in the same interleaved rounds.

    Args:
        models: name -> model. prefills: name -> `(cache, first token, ...)` from `prefill_for_decode`.
        batch_sizes: name -> the batch that model decodes (the same for all at a fixed batch; each its own largest).
        calls: name -> what runs a step: the model's `compiled_call`; None runs the models eagerly.

    Returns `{"times": name -> per-step seconds, "compile_s": name -> seconds of the first (compiling) run,
    "dynamo": name -> what torch's compiler counted during it}`; the first run is not among the times.
    """
    calls = calls or models
    caches, tokens, compile_s, dynamo = {}, {}, {}, {}
    for name, model in models.items():
        cache, token = prefills[name][:2]
        caches[name] = static_cache_from(cache, model, batch_sizes[name], cache.get_seq_length() + steps)
        tokens[name] = token.repeat_interleave(batch_sizes[name], 0)
        counters.clear()
        compile_s[name] = decode_run(calls[name], caches[name], tokens[name], steps, device) * steps
        dynamo[name] = dynamo_counts()
    tasks = {name: (lambda name=name: decode_run(calls[name], caches[name], tokens[name], steps, device)) for name in models}
    times = interleaved(tasks, repeats)
    return {"times": times, "compile_s": compile_s, "dynamo": dynamo}


def decode_peak_bytes(model, prefill, batch_size: int, steps: int, device) -> int:
    """Weights, a static cache at `batch_size` and the largest growth during one eager decode step from it."""
    cache, token = prefill[:2]
    static = static_cache_from(cache, model, batch_size, cache.get_seq_length() + steps)
    tokens = token.repeat_interleave(batch_size, 0)
    above = peak_allocated_during(lambda: model(input_ids=tokens, use_cache=True, cache=static), device)
    return tensor_bytes(*model.parameters(), *model.buffers()) + static_cache_bytes(static) + above


def sweep_budget(device: torch.device, budget_bytes: int | None) -> int:
    """The memory every model gets in the sweep: `budget_bytes` when given, else (CUDA) the whole device's."""
    if budget_bytes is not None:
        return budget_bytes
    if device.type != "cuda":
        raise ValueError("A CPU batch sweep needs a memory budget (--memory-budget-gib).")
    return torch.cuda.get_device_properties(device).total_memory


def sweep_batch_limit(size: HiveBenchSize, device: torch.device) -> int:
    """The largest batch the sweep tries: the size's CPU cap on a CPU (time, not memory), 1024 on a GPU."""
    return size.cpu_sweep_batch_limit if device.type == "cpu" else 1024


def largest_decode_batches(models: dict, prefills: dict, steps: int, device, budget: int, limit: int) -> dict:
    """name -> `{"batch": largest batch that fits, "peak_bytes": batch -> bytes measured}`."""
    found = {}
    for name, model in models.items():
        batch, tried = largest_batch(lambda b, m=model, p=prefills[name]: decode_peak_bytes(m, p, b, steps, device), budget, limit)
        found[name] = {"batch": batch, "peak_bytes": tried}
    return found


def train_peak_bytes(model, step, optimizer, device) -> int:
    """Resident training bytes (weights, gradients, optimizer state) after a warm step, plus a step's peak growth."""
    step()
    return resident_training_bytes(model, optimizer) + peak_allocated_during(step, device)


def measure_train_sweep(models: dict, make_step, repeats: int, device, budget: int, limit: int) -> dict:
    """Stage-2 samples/s of each model at the largest batch that fits `budget`, all in the same interleaved rounds.

    `make_step(name, batch_size)` returns `(step, optimizer)`: a function running one stage-2 step of that model on a
    batch of that size, and its optimizer.
    """
    largest, steps = {}, {}
    for name, model in models.items():

        def peak(batch_size, name=name, model=model):
            step, optimizer = make_step(name, batch_size)
            try:
                return train_peak_bytes(model, step, optimizer, device)
            finally:
                for parameter in model.parameters():
                    parameter.grad = None

        batch, tried = largest_batch(peak, budget, limit)
        if batch == 0:
            raise ValueError(f"{name}: a stage-2 step at batch 1 needs {tried[1]:,} bytes, over the sweep's budget of {budget:,}.")
        largest[name] = {"batch": batch, "peak_bytes": tried}
        steps[name] = make_step(name, batch)[0]
    times = interleaved({name: (lambda name=name: timed(steps[name], device)) for name in models}, repeats)
    for model in models.values():
        for parameter in model.parameters():
            parameter.grad = None
    return {"largest": largest, "times": times}


def subset(measure: dict, models: dict) -> dict:
    """A `measure_static_decode` result restricted to `models`."""
    return {part: {name: value for name, value in values.items() if name in models} for part, values in measure.items()}


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
