"""`hive data`: generate hive-shapes, or read a training dataset through a loader and report what was skipped.

`hive data shapes --out DIR` writes:
    DIR/                  the scenes, a `DatasetDict` (train, validation, test, test_compositional); `load_from_disk`
    DIR/vqa/              one row per question with its level (validation, test, test_compositional)
    DIR/mme/              MME layout (same three splits)
    DIR/scienceqa/        ScienceQA-IMG layout (same three splits)
    DIR/okvqa/            OK-VQA layout (same three splits)
    DIR/classification/   image + label (shape of the main object), every split
With `--format parquet` each of these folders holds one `<split>.parquet` file per split instead.

Example:
    $ hive data shapes --out shapes/ --seed 0 --num-train 20000
    $ hive data inspect --format llava --path llava.json --image-root images/ --stage 3
"""

import os
import shutil
import sys
import tempfile
import time

import datasets

from .loaders import HiveDataReport, load_conversations, load_image_text_pairs, load_images
from .shapes import SPLITS, HiveShapesConfig, generate_shapes
from .shapes_layouts import to_classification, to_mme, to_okvqa, to_scienceqa, to_vqa

EVALUATION_SPLITS = ("validation", "test", "test_compositional")
VIEWS = {"vqa": to_vqa, "mme": to_mme, "scienceqa": to_scienceqa, "okvqa": to_okvqa}


def add_arguments(parser):
    commands = parser.add_subparsers(dest="data_command", metavar="{shapes,inspect}", required=True)
    shapes = commands.add_parser("shapes", help="Generate the hive-shapes benchmark and its evaluation layouts.")
    shapes.add_argument("--out", required=True, help="Output folder (created; see --overwrite).")
    shapes.add_argument("--seed", type=int, default=0, help="Dataset seed: the same seed gives the same bytes.")
    shapes.add_argument("--num-train", type=int, default=20_000, help="Training scenes (default 20000).")
    shapes.add_argument("--num-eval", type=int, default=1_000,
                        help="Scenes in each of validation, test and test_compositional (default 1000).")
    shapes.add_argument("--image-size", type=int, default=HiveShapesConfig.image_size, help="Image side in pixels.")
    shapes.add_argument("--max-objects", type=int, default=HiveShapesConfig.max_objects, help="Most objects per scene.")
    shapes.add_argument("--format", choices=("arrow", "parquet"), default="arrow",
                        help="arrow: save_to_disk folders (default); parquet: one <split>.parquet per folder.")
    shapes.add_argument("--overwrite", action="store_true", help="Replace DIR if it exists.")

    inspect = commands.add_parser("inspect", help="Read a dataset through its loader and report skipped or bad rows.")
    inspect.add_argument("--path", required=True, help="save_to_disk folder, parquet file(s) or folder, imagefolder, "
                                                       "webdataset .tar shard(s), or LLaVA .json/.jsonl.")
    inspect.add_argument("--format", default=None,
                         help="disk, parquet, imagefolder, webdataset or llava (default: guessed from the path).")
    inspect.add_argument("--stage", type=int, choices=(1, 2, 3), default=2,
                         help="1: images only; 2: image-text pairs; 3: conversations (LLaVA JSON).")
    inspect.add_argument("--image-root", default=None, help="Folder the LLaVA JSON's image paths are relative to.")
    inspect.add_argument("--split", default="train")
    inspect.add_argument("--streaming", action="store_true", help="Stream instead of loading in memory.")
    inspect.add_argument("--strict", action="store_true", help="Stop at the first unreadable image.")
    inspect.add_argument("--cache-dir", default=None, help="datasets cache folder for the parquet, imagefolder and "
                                                          "webdataset builders.")


def run(args) -> int:
    if args.data_command == "shapes":
        return _run_shapes(args)
    return _run_inspect(args)


def _run_shapes(args) -> int:
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not args.overwrite:
        print(f"hive data shapes: {out} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    config = HiveShapesConfig(image_size=args.image_size, max_objects=args.max_objects)
    start = time.perf_counter()
    shapes = generate_shapes(seed=args.seed, num_train=args.num_train, num_validation=args.num_eval,
                             num_test=args.num_eval, num_test_compositional=args.num_eval, config=config)
    seconds = time.perf_counter() - start
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".hive-shapes-", dir=parent)
    try:
        _save(shapes, staging, args.format)
        eval_splits = {split: shapes[split] for split in EVALUATION_SPLITS}
        for name, view in VIEWS.items():
            _save({split: view(part) for split, part in eval_splits.items()}, os.path.join(staging, name), args.format)
        probe = {split: to_classification(shapes[split], max_objects=args.max_objects) for split in SPLITS}
        _save(probe, os.path.join(staging, "classification"), args.format)
        if os.path.exists(out):
            trash = tempfile.mkdtemp(prefix=".hive-shapes-old-", dir=parent)
            os.replace(out, os.path.join(trash, "old"))
            os.replace(staging, out)
            shutil.rmtree(trash)
        else:
            os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    counts = ", ".join(f"{split} {len(shapes[split])}" for split in SPLITS)
    print(f"hive-shapes (seed {args.seed}, {args.image_size}x{args.image_size}): {counts} scenes generated in "
          f"{seconds:.1f} s; written to {out}")
    return 0


def _save(splits, folder: str, file_format: str) -> None:
    if file_format == "arrow":
        datasets.DatasetDict(splits).save_to_disk(folder)
        return
    os.makedirs(folder, exist_ok=True)
    for split, part in splits.items():
        part.to_parquet(os.path.join(folder, f"{split}.parquet"))


def _run_inspect(args) -> int:
    report = HiveDataReport()
    options = dict(streaming=args.streaming, strict=args.strict, report=report)
    if args.stage == 3:
        dataset = load_conversations(args.path, image_root=args.image_root, **options)
    elif args.stage == 1:
        dataset = load_images(args.path, format=args.format, split=args.split, cache_dir=args.cache_dir, **options)
    else:
        dataset = load_image_text_pairs(args.path, format=args.format, split=args.split, cache_dir=args.cache_dir,
                                        **options)
    rows = sum(1 for _ in dataset)
    print(f"{rows} usable rows; columns: {', '.join(dataset.column_names or [])}")
    print(report.summary())
    return 0
