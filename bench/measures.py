"""Timing, memory and peak-throughput primitives shared by every benchmark measure.

Example:
    >>> import torch
    >>> from hive_vlm.bench.measures import interleaved, timed
    >>> x, cpu = torch.randn(256, 256), torch.device("cpu")
    >>> times = interleaved({"mm": lambda: timed(lambda: x @ x, cpu), "add": lambda: timed(lambda: x + x, cpu)}, repeats=3)
    >>> len(times["mm"])
    3
"""

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of `fn()`, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(tasks: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Runs each task (which returns its own measured seconds) `repeats` times, alternating the order every round.

    HIVE and LLaVA repetitions alternate (A B, B A, A B, ...) so that drift in the machine's speed (other processes,
    clocks, caches) falls on both sides alike. `warmup` untimed rounds come first.
    """
    names = list(tasks)
    for _ in range(warmup):
        for name in names:
            tasks[name]()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            times[name].append(tasks[name]())
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def tensor_bytes(*tensors) -> int:
    """Bytes of the distinct storages among `tensors` (tied weights count once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total += tensor.untyped_storage().nbytes()
    return total


def resident_training_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, buffers, gradients and optimizer state alive between two training steps."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]
    return tensor_bytes(*tensors)


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null: the CPU profiler's native library prints a line at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_allocated_during(fn: Callable[[], object], device: torch.device) -> int:
    """Largest growth of allocated tensor bytes while `fn()` runs, above what was allocated when it started.

    CUDA: `torch.cuda.max_memory_allocated` after a reset. CPU: the allocation and free events of the PyTorch profiler
    (`profile_memory=True`) summed in time order. Both count tensor memory only (no allocator caching, no interpreter).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    if not events:
        raise RuntimeError("The PyTorch profiler recorded no memory events; CPU peak memory cannot be measured with this torch build.")
    current = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def matmul_probe_tasks(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...]) -> dict[str, Callable[[], float]]:
    """Timed `torch.matmul` of square `(n, n) @ (n, n)` inputs per size n, to interleave with the measure they rate.

    Run in the same rounds as the measure whose FLOP/s they are compared with, the matmuls see the same machine load.
    """
    tasks = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        tasks[f"matmul_{n}"] = lambda a=a, b=b: timed(lambda: torch.matmul(a, b), device)
    return tasks


def matmul_flops_per_second(times: dict[str, list[float]]) -> dict[int, float]:
    """FLOP/s (2 n^3 / median seconds) of every `matmul_<n>` entry of an `interleaved` result."""
    return {int(name.split("_")[1]): 2 * int(name.split("_")[1]) ** 3 / median(values) for name, values in times.items() if name.startswith("matmul_")}


def copy_probe_tasks(device: torch.device, nbytes: int) -> dict[str, Callable[[], float]]:
    """A timed device-to-device copy of `nbytes` (one source, one destination buffer), to interleave with decode steps.

    `nbytes` should be several times the last-level cache, so that the copy streams from memory.
    """
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    destination = torch.empty_like(source)
    return {"copy": lambda: timed(lambda: destination.copy_(source), device)}


def copy_bytes_per_second(seconds: list[float], nbytes: int) -> float:
    """Bytes read plus bytes written per second by a copy of `nbytes` (its median time)."""
    return 2 * nbytes / median(seconds)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def largest_batch(peak_bytes: Callable[[int], int], budget: int, limit: int) -> tuple[int, dict[int, int]]:
    """The largest batch size up to `limit` whose measured peak bytes fit in `budget`, and every size tried.

    `peak_bytes(batch)` runs the work at that batch and returns its peak bytes; running out of device memory counts as
    not fitting. Memory grows about linearly with the batch, so the size predicted from batches 1 and 2 is tried first,
    then smaller ones (by 10%, at least 1) until one fits. Returns 0 when even batch 1 does not fit.
    """
    tried = {}

    def fits(batch: int) -> bool:
        try:
            tried[batch] = peak_bytes(batch)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            tried[batch] = -1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return False
        return tried[batch] <= budget

    if not fits(1):
        return 0, tried
    if limit == 1 or not fits(2):
        return 1, tried
    per_sample = max(tried[2] - tried[1], 1)
    batch = max(2, min(limit, (budget - tried[1]) // per_sample + 1))
    while batch > 2 and not fits(batch):
        batch -= max(1, batch // 10)
    return batch, tried
