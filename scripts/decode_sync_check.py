"""Checks that HIVE's compiled decode step never waits for the GPU (issue 27): prefill eagerly into a static cache,
compile the forward whole (`fullgraph=True`), then run decode steps under `torch.cuda.set_sync_debug_mode("error")`,
which raises on any host-device synchronisation (`.item()`, `.tolist()`, `bool(tensor)`, `nonzero`). Both fusions.
On the CPU (no sync to detect) it checks the same steps compile whole, once, with the eager logits.

    python scripts/decode_sync_check.py [--size toy|small|base] [--steps 16]     # one line per fusion; exit 1 on failure
"""

import argparse
import sys

import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transformers import StaticCache

from hive_vlm.bench.models import bench_batch, build_models, build_shared_softmax
from hive_vlm.bench.sizes import BENCH_SIZES
from modeling_hive.compatibility_hive import CACHE_NAME


def decode_inputs(token, step: int, prompt_length: int, max_cache_len: int, batch_size: int, device):
    """One decode step's inputs, of the same shapes at every step: a mask over the whole static cache."""
    position = prompt_length + step
    mask = torch.zeros(batch_size, max_cache_len, dtype=torch.long, device=device)
    mask[:, : position + 1] = 1
    return dict(input_ids=token, attention_mask=mask, position_ids=torch.full((batch_size, 1), position, device=device))


def check(model, pixel_values, input_ids, steps: int, device) -> str:
    """Two static caches filled by one eager prefill each; the compiled step decodes on one, the eager forward on the
    other. The first compiled step compiles; every later one runs under the sync check."""
    batch_size, prompt_length = input_ids.shape
    max_cache_len = prompt_length + steps
    caches = [StaticCache(config=model.config.text_config, max_cache_len=max_cache_len) for _ in range(2)]
    torch._dynamo.reset()
    counters.clear()
    step_forward = torch.compile(model.forward, fullgraph=True)
    largest = 0.0
    with torch.no_grad():
        for cache in caches:
            out = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, **{CACHE_NAME: cache})
        token = out.logits[:, -1:].argmax(-1)
        for step in range(steps):
            inputs = decode_inputs(token, step, prompt_length, max_cache_len, batch_size, device)
            checked = device.type == "cuda" and step > 0
            if checked:
                torch.cuda.set_sync_debug_mode("error")
            try:
                compiled = step_forward(**inputs, use_cache=True, **{CACHE_NAME: caches[0]}).logits
            finally:
                if checked:
                    torch.cuda.set_sync_debug_mode("default")
            reference = model(**inputs, use_cache=True, **{CACHE_NAME: caches[1]}).logits
            largest = max(largest, (compiled.float() - reference.float()).abs().max().item())
            token = reference[:, -1:].argmax(-1)
    breaks, graphs = sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]
    if breaks or graphs != 1:
        raise RuntimeError(f"the decode step compiled into {graphs} graphs with {breaks} graph breaks")
    synced = "no sync in steps 2-{}".format(steps) if device.type == "cuda" else "no sync to detect on the CPU"
    return f"{steps} decode steps compiled whole, 1 graph, {synced}, largest logit difference from eager {largest:.2e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="toy", choices=sorted(BENCH_SIZES))
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = BENCH_SIZES[args.size]
    hive, _ = build_models(size, device, dtype)
    batch = bench_batch(size, 1, device=device, dtype=dtype)
    failed = False
    for mode in ("gated", "shared_softmax"):
        try:
            model = hive if mode == "gated" else build_shared_softmax(hive, device, dtype)
            pixel_values, input_ids = batch.pixel_values, batch.input_ids
            print(f"decode sync check, {mode}: {check(model, pixel_values, input_ids, args.steps, device)}", flush=True)
        except Exception as error:  # one line per fusion, whatever fails
            failed = True
            print(f"decode sync check, {mode}: FAILED ({type(error).__name__}: {str(error).splitlines()[0][:300]})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
