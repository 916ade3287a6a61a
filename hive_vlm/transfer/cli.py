"""`hive transfer`: the paper's own protocol. Encoders pre-trained in different ways (HIVE's hierarchical fusion and
its alternatives, through a proxy LLM) are each carried into an ordinary LLaVA pipeline, and the pipelines are
compared: does hierarchical pre-training give an encoder that transfers better?

Phases:
    pretraining/   `hive ablate` on the recipe for the fusion variants (every run keeps its encoder), with the
                   shared backbones, data and evaluations
    transfer-llm/  the transfer LLM, when it differs from the proxy LLM and is built from a config (stage 0)
    transfer/      one folder per variant and seed: LLaVA around that encoder, trained and evaluated
    report         transfer.md, transfer.json and plots/: every variant's scores per level, its encoder's linear
                   probe, the seed-noise verdicts against hive-paired, pre-training seconds per step and transfer cost

Example:
    $ hive transfer --recipe recipes/ablation-shapes-learning.yaml --out transfer-study
    $ hive transfer --recipe recipes/tiny-shapes.yaml --quick --out /tmp/transfer-quick
"""

import argparse
import logging

from hive_vlm.ablation.cli import study_arguments, study_overrides

from .settings import VARIANTS, load_transfer
from .study import run_transfer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    study_arguments(parser, __doc__, "transfer-study")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="Pre-training variants to compare (default: all eight).")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = study_overrides(args, "transfer", "variants", args.variants)
    recipe, study, transfer = load_transfer(args.recipe, quick=args.quick, overrides=overrides)
    run_transfer(recipe, study, transfer, args.out, isolate=not args.no_isolate, threads=args.threads)
    return 0
