"""The memory-bandwidth limit of a decode step: the bytes it must read (weights plus cache) over the device's measured
copy bandwidth, and the fraction of that limit a measured step reaches.

A decode step reads every weight it uses once for the whole batch, and per sample the LLM's cached keys/values and, for
HIVE, each block's image keys/values. LLaVA's image tokens are part of its LLM cache. Which weights a step uses is read
off the step itself: the parameters of every module it calls (an embedding reads one row per token; a matrix shared
with a module that reads all of it, as a tied LM head does, counts once, in full). Norms and activations stay on chip
and are not counted; neither is the per-step output (logits), which is small next to the weights.

Example:
    >>> from hive_vlm.bench.roofline import decode_step_bytes
    >>> decode_step_bytes(weight_bytes=1000, cache_bytes_per_position=10, image_bytes=0, positions=50, steps=3)
    1520.0
"""

from collections.abc import Callable

import torch
from torch import nn

from .measures import median
from .models import cache_bytes
from .sizes import HiveBenchSize


def decode_weight_bytes(model: nn.Module, step: Callable[[], object]) -> int:
    """Bytes of the distinct weights `step()` (one decode step of `model`) reads: every parameter of a module it calls."""
    called = []
    handles = [module.register_forward_pre_hook(lambda module, args: called.append(module)) for module in model.modules()]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    read = {}  # storage -> bytes read from it
    for module in called:
        for parameter in module.parameters(recurse=False):
            nbytes = parameter.numel() * parameter.element_size()
            if isinstance(module, nn.Embedding):  # one row per looked-up token
                nbytes = parameter.shape[1] * parameter.element_size()
            key = parameter.untyped_storage().data_ptr()
            read[key] = max(read.get(key, 0), nbytes)
    return sum(read.values())


def cache_bytes_per_position(cache_bytes: dict, positions: int) -> float:
    """Bytes the LLM's own cache layers hold per cached position, from `models.cache_bytes` after a prefill."""
    return cache_bytes["self_attention"] / positions


def decode_step_bytes(weight_bytes: int, cache_bytes_per_position: float, image_bytes: float, positions: int, steps: int,
                      batch_size: int = 1) -> float:  # fmt: skip
    """Bytes one decode step reads, averaged over `steps` steps after a prefill of `positions`.

    The weights once; per sample, the LLM's keys/values at the mean number of positions the steps attend to (step i,
    from 0, attends to `positions + i + 1`) and `image_bytes` of image keys/values (HIVE's blocks; 0 for LLaVA).
    """
    mean_positions = positions + (steps + 1) / 2
    return weight_bytes + batch_size * (cache_bytes_per_position * mean_positions + image_bytes)


def bandwidth_fraction(step_bytes: float, bytes_per_second: float, step_seconds: float) -> float:
    """The time the step's bytes take at the measured bandwidth, over the measured step time."""
    return step_bytes / bytes_per_second / step_seconds


def probe_bytes(device: torch.device) -> int:
    """The copy probe's size: 1 GiB on a GPU (well above any L2), 256 MiB on a CPU (well above its last-level cache)."""
    return 2**30 if device.type == "cuda" else 2**28


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
