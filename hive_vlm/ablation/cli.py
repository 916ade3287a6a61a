"""`hive ablate`: does hierarchy help? HIVE against flat (LLaVA) and Q-Former (BLIP-2) fusion on equal terms, on the
data of any `hive train` recipe.

Every fusion gets the same pretrained encoder and LLM weights, the same tokenizer, the same batches in the same order,
the same step counts, optimiser and seeds, and the same evaluation adapters and scorers. Per fusion and seed it
records the score of every evaluation the recipe names (per level or group where the benchmark reports them; on
hive-shapes, its test splits per level and its MME-, ScienceQA- and OK-VQA-layout views), the encoder's linear-probe
accuracy after training (hive-shapes), seconds per training step and peak memory; then it aggregates mean and
standard deviation over seeds and says which differences lie within the seed noise.

The recipe is the one `hive train` reads; its optional `study` section (see `hive_vlm.ablation.settings`) chooses the
fusions, seeds and study-only settings. Without one, the default fusions and seeds run, and the report says so.

Phases:
    shared/     the recipe's tokenizer (with an image placeholder), stage 0 of the LLM when the recipe has one and
                stage 1 of the encoder, the training data and the evaluations: built once, shared by every run
    runs/       one folder per fusion and seed (each run in its own process, so its peak memory is its own)
    report      ablation.md (tables), ablation.json (everything) and plots/ (score against steps, per level)

Example:
    $ hive ablate --recipe recipes/ablation-shapes.yaml --out ablation
    $ hive ablate --recipe recipes/tiny-shapes.yaml --quick --out /tmp/ablation-quick
    $ hive ablate --recipe my-llava-data.yaml --fusions hive-paired flat --seeds 2 --out my-study
    $ hive ablate --recipe recipes/ablation-shapes.yaml --match-params stage3.max_steps=400 --out ablation-matched
    $ hive ablate --recipe recipes/ablation-shapes-learning.yaml --set study.pretrain_llm=true --out ablation-llm-trained
"""

import argparse
import json
import logging

from .fusions import FUSIONS
from .settings import load_study
from .study import run_ablation


def study_arguments(parser: argparse.ArgumentParser, doc: str, out: str) -> None:
    """The options every study command takes: the recipe and its overrides, the folder, seeds, --quick and threads."""
    parser.description = doc.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = doc.split("\n\n", 1)[1]
    parser.add_argument("--recipe", help="A hive train recipe (default recipes/ablation-shapes.yaml).")
    parser.add_argument("--out", default=out, help="Folder for the study (reruns keep finished runs).")
    parser.add_argument("--seeds", type=int, help="Number of seeds 0..N-1 (default: the recipe's).")
    parser.add_argument("--quick", action="store_true", help="A few steps on a few examples: every output in minutes (numbers mean nothing).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a recipe value, e.g. --set stage3.max_steps=400 (repeatable).")  # fmt: skip
    parser.add_argument("--threads", type=int, help="Torch threads per run (default: torch's); 1 on a machine shared with other jobs.")
    parser.add_argument("--no-isolate", action="store_true", help="Run everything in this process (faster to start; memory then shares one process).")
    parser.add_argument("extra_overrides", nargs="*", metavar="KEY=VALUE", help="Recipe overrides, as hive train takes them.")


def study_overrides(args, section: str, key: str, chosen: list | None) -> list[str]:
    """The recipe overrides of a study command's arguments: its own, then `--seeds` and the command's choice of what
    to compare (`chosen`, as `<section>.<key>`)."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    overrides = [*args.overrides, *args.extra_overrides]
    if chosen:
        overrides.append(f"{section}.{key}={json.dumps(chosen)}")
    if args.seeds is not None:
        given = [item for item in overrides if item.split("=", 1)[0].strip() == f"{section}.seeds"]
        if given:
            raise ValueError(f"--seeds {args.seeds} and {given[0]} both set the seeds; give one of them.")
        overrides.append(f"{section}.seeds={args.seeds}")
    return overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    study_arguments(parser, __doc__, "ablation")
    parser.add_argument("--fusions", nargs="+", choices=FUSIONS, help="Fusions to compare (default: the recipe's, all six).")
    parser.add_argument("--match-params", action=argparse.BooleanOptionalAction, default=None,
                        help="Match every fusion's stage-2 budget to hive-paired's within 10%% (the default: study.match_params); "
                             "--no-match-params gives each fusion its own.")  # fmt: skip


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = study_overrides(args, "study", "fusions", args.fusions)
    if args.match_params is not None:
        overrides.append(f"study.match_params={str(args.match_params).lower()}")
    recipe, study = load_study(args.recipe, quick=args.quick, overrides=overrides)
    run_ablation(recipe, study, args.out, isolate=not args.no_isolate, threads=args.threads)
    return 0
