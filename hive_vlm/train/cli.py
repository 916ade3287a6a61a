"""`hive train`: run a recipe's stages, then write the training record and model card of `final/` and, when a stage
sets `push_to_hub`, upload it through `hive push`'s allow-list (the Trainer's own push, which would upload
checkpoints, stays off).

Example:
    $ hive train --recipe recipes/tiny-shapes.yaml --output-dir outputs/tiny
    $ hive train --recipe recipes/tiny-shapes.yaml --stage 2 stage2.max_steps=20 --resume
"""

import logging

from hive_vlm.hub.push import hub_settings, push_training_run
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.training.recipe import load_recipe


STAGES = {"0": [0], "1": [1], "2": [2], "3": [3], "all": None}  # all: the recipe's stages (0 only with a stage0 section)


def add_arguments(parser):
    parser.add_argument("--recipe", required=True, help="YAML recipe, e.g. recipes/tiny-shapes.yaml.")
    parser.add_argument("--stage", default="all", choices=sorted(STAGES), help="Which stage to run (default: all of the recipe's).")
    parser.add_argument("--output-dir", default=None, help="Where the stages write (default: the recipe's output_dir).")
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted run from its last complete checkpoint.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Recipe overrides, e.g. stage2.max_steps=10.")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    stages = STAGES[args.stage] or recipe.stages
    hub_settings(recipe, stages)  # a missing hub_model_id fails now, not after the last stage
    run = HiveRecipeRun(recipe, output_dir=args.output_dir, resume=args.resume)
    final = run.run(stages)
    if final and run.state.is_main_process and stages[-1] > 1:
        push_training_run(recipe, run.output_dir, stages)
    print(f"done: {final}")
    return 0
