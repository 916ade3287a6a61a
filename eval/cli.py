"""`hive eval`: score a saved model on MME, GQA, OK-VQA, ScienceQA-IMG, hive-shapes, classification, a probe, or
a LLaVA-format test file of your own (llava-qa: VQA accuracy, per `level` or `type` when the records have one).

Examples:
    $ hive eval --model runs/hive --benchmark hive-shapes --data shapes/ --limit 200
    $ hive eval --model runs/hive --benchmark llava-qa --data test.json --image-root images/
    $ hive eval --model runs/hive --benchmark mme --data MME/ --protocol lmms-eval --out results/mme.json
    $ hive eval --model runs/hive --benchmark all --data mme=MME/ --data gqa=GQA/ --out results/
    $ hive eval --model runs/encoder --benchmark linear-probe --data cifar10/
"""

import argparse
import json
from functools import partial
from pathlib import Path

from .classification import linear_probe
from .registry import NAMES, benchmark_adapter, benchmarks
from .runner import evaluate_benchmark, generate_answers, load_model, model_identity


DEFAULT_OUT_DIR = Path("eval_results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--model", required=True, help="Saved model folder (for linear-probe: an encoder or HIVE folder).")
    parser.add_argument("--benchmark", required=True, choices=(*NAMES, "all"), help="Benchmark to run, or 'all'.")
    parser.add_argument(
        "--data", required=True, action="append", metavar="[NAME=]PATH",
        help="Benchmark data: a save_to_disk folder, parquet file(s), the dataset repo's files, or a Hub id "
        "(llava-qa: a LLaVA-format .json or .jsonl file). "
        "Repeat as NAME=PATH with --benchmark all; 'all' runs every benchmark whose data is given.",
    )  # fmt: skip
    parser.add_argument(
        "--image-root", help="llava-qa: the folder its --data file's image paths are relative to (default: the file's)."
    )
    parser.add_argument("--limit", type=int, help="Evaluate only the first N questions (images for linear-probe).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generate() call (default 8).")
    parser.add_argument(
        "--protocol", action="append", metavar="[NAME=]P",
        help="Scoring variant, e.g. official, lmms-eval, llava (default: the benchmark's first).",
    )  # fmt: skip
    parser.add_argument("--split", action="append", metavar="[NAME=]SPLIT", help="Split to evaluate.")
    parser.add_argument(
        "--out", help=f"Results JSON (a folder with --benchmark all); default {DEFAULT_OUT_DIR}/<benchmark>.json."
    )
    parser.add_argument("--device", help="Device for the model (default: cuda when available, else cpu).")
    parser.add_argument("--dtype", default="auto", help="Weights dtype: auto, float32, bfloat16, float16.")
    parser.add_argument("--probe-epochs", type=int, default=90, help="linear-probe: training epochs (default 90).")
    parser.add_argument("--probe-train-split", default="train", help="linear-probe: split the head trains on.")
    parser.add_argument("--probe-pooling", choices=("mean", "cls"), default="mean", help="linear-probe: pooling.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")


def _per_benchmark(values, option: str) -> dict:
    """`["mme=A", "B"]` -> `{"mme": "A", None: "B"}` (None applies to any benchmark)."""
    parsed = {}
    for value in values or []:
        name, separator, rest = value.partition("=")
        key, item = (name, rest) if separator and name in NAMES else (None, value)
        if key in parsed:
            raise ValueError(f"{option} is given twice for {key or 'the benchmark'}.")
        parsed[key] = item
    return parsed


def run(args) -> int:
    data = _per_benchmark(args.data, "--data")
    protocols = _per_benchmark(args.protocol, "--protocol")
    splits = _per_benchmark(args.split, "--split")
    if args.benchmark == "all":
        if None in data:
            raise ValueError("With --benchmark all, name each dataset: --data mme=PATH --data gqa=PATH ...")
        names = [name for name in NAMES if name in data]
        out_dir = Path(args.out) if args.out else DEFAULT_OUT_DIR
        outputs = {name: out_dir / f"{name}.json" for name in names}
    else:
        names = [args.benchmark]
        if args.benchmark not in data and None not in data:
            raise ValueError(f"--data names no data for {args.benchmark}.")
        data.setdefault(args.benchmark, data.get(None))
        outputs = {args.benchmark: Path(args.out) if args.out else DEFAULT_OUT_DIR / f"{args.benchmark}.json"}
    if args.image_root is not None and "llava-qa" not in names:
        raise ValueError("--image-root applies to llava-qa only, which this run does not score.")

    adapters = benchmarks()
    identity = model_identity(args.model)
    model = processor = None
    for name in names:
        if name == "linear-probe":
            results = linear_probe(
                args.model, data[name], outputs[name], train_split=args.probe_train_split,
                test_split=splits.get(name, splits.get(None, "test")), pooling=args.probe_pooling, epochs=args.probe_epochs,
                limit=args.limit, progress=not args.no_progress,
            )  # fmt: skip
        else:
            if model is None:
                model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
            adapter = benchmark_adapter(name, image_root=args.image_root) if name == "llava-qa" else adapters[name]
            predict = partial(generate_answers, model, processor, max_new_tokens=adapter.max_new_tokens)
            results = evaluate_benchmark(
                adapter, data[name], predict, outputs[name], protocol=protocols.get(name, protocols.get(None)),
                split=splits.get(name, splits.get(None)), limit=args.limit, batch_size=args.batch_size,
                model=identity, progress=not args.no_progress,
            )  # fmt: skip
        print(f"{name} ({results['protocol']}): {json.dumps(results['scores'])} -> {outputs[name]}")
    return 0
