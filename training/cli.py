"""`hive train`: run a recipe's stages.

Example:
    $ hive train --recipe recipes/tiny-shapes.yaml --output-dir outputs/tiny
    $ hive train --recipe recipes/tiny-shapes.yaml --stage 2 stage2.max_steps=20 --resume
"""

import logging

from .pipeline import HiveRecipeRun
from .recipe import load_recipe


STAGES = {"1": [1], "2": [2], "3": [3], "all": [1, 2, 3]}


def add_arguments(parser):
    parser.add_argument("--recipe", required=True, help="YAML recipe, e.g. recipes/tiny-shapes.yaml.")
    parser.add_argument("--stage", default="all", choices=sorted(STAGES), help="Which stage to run (default: all three).")
    parser.add_argument("--output-dir", default=None, help="Where the stages write (default: the recipe's output_dir).")
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted run from its last complete checkpoint.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Recipe overrides, e.g. stage2.max_steps=10.")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    final = HiveRecipeRun(recipe, output_dir=args.output_dir, resume=args.resume).run(STAGES[args.stage])
    print(f"done: {final}")
    return 0
