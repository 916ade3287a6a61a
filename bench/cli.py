"""`hive bench`: measure HIVE against transformers' LLaVA on identical backbones, print a table, write JSON.

Example:
    $ hive bench --size small --device cpu --out bench-small.json
    $ hive bench --size base --device cuda --dtype bfloat16 --repeats 10
    $ hive bench --size base --device cuda --dtype bfloat16 --compile --sweep   # what a GPU user sees
"""

import json
import os
import sys
import tempfile

from .benchmark import DTYPES, run_benchmark
from .sizes import BENCH_SIZES
from .tables import format_table


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=sorted(BENCH_SIZES), default="small", help="Backbone proportions (default: small).")
    parser.add_argument("--out", default=None, help="JSON file to write (default: hive-bench-<size>.json).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: bfloat16 on cuda, float32 on cpu.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per measure and model (default: 5).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: 1 on cpu, stable on shared machines; torch's choice on cuda).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights and inputs.")
    parser.add_argument("--compile", action="store_true",
                        help="Also time decode steps compiled as generate(cache_implementation='static') compiles them (static caches; "
                             "CUDA graphs on cuda), every model in the same rounds.")  # fmt: skip
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile (default: inductor).")
    parser.add_argument("--sweep", action="store_true",
                        help="Also run the batch sweep: decode tokens/s at batch 1, 8, 32 and the largest that fits; stage-2 samples/s "
                             "at the largest batch that fits each model.")  # fmt: skip
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="Memory each model gets in the sweep (default: the size's CPU budget on cpu, the device's memory on cuda).")  # fmt: skip


def write_json(result: dict, path: str) -> None:
    """Writes `result` to `path` atomically (a temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)


def run(args) -> int:
    if args.repeats < 1:
        print(f"hive bench: --repeats must be at least 1, got {args.repeats}.", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(
            args.size,
            device=args.device,
            dtype=args.dtype,
            repeats=args.repeats,
            seed=args.seed,
            threads=args.threads,
            compile=args.compile,
            compile_backend=args.compile_backend,
            sweep=args.sweep,
            memory_budget_gib=args.memory_budget_gib,
            log=lambda line: print(f"[hive bench] {line}", file=sys.stderr, flush=True),
        )
    except ValueError as error:
        print(f"hive bench: {error}", file=sys.stderr)
        return 2
    out = args.out or f"hive-bench-{args.size}.json"
    write_json(result, out)
    print(format_table(result))
    print(f"\nwrote {out}")
    return 0
