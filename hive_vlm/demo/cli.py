"""`hive demo`: the whole HIVE method end to end on one machine, offline, in minutes on a CPU.

Phases (each prints its progress):
    1. data       hive-shapes generated from a seed; a word-level tokenizer built from its text
    2. backbones  a tiny ViT and a tiny Llama-style LLM built from configs
    3. stage 0    the LLM pretrained on the synthetic text (captions and question-answer chats): HIVE assumes a
                  pretrained LLM, and none can be downloaded here (the recipe's stage 0, `HiveLMTrainer`)
    4. stages 1-3 masked image modelling, hierarchical alignment, joint fine-tuning (the recipe's stages 1-3)
    5. eval       hive-shapes test and test_compositional per level next to the majority-answer baseline, and the
                  MME-, ScienceQA- and OK-VQA-layout views, each scored by its official scorer
    6. hub folder the final model, its card and its results, ready for `hive push`
    7. pipeline   that folder loaded back with `pipeline("visual-question-answering", trust_remote_code=True)`,
                  asked about a freshly generated image
    8. figure     per-level cross-attention maps and gates (`hive visualize`)

Layout of `--out`:
    run/        the training run (processor/, data/, backbones/, stage0-3/, final/; see hive_vlm.training.pipeline)
    model/      the Hub-ready folder
    results/    one results JSON per evaluation, baselines.json and summary.json
    fresh_scene.png, attention.png

Example:
    $ hive demo --out hive-demo
    $ hive demo --out /tmp/demo --fast
    $ hive demo --text-model Qwen/Qwen2-0.5B --vision-model google/siglip-base-patch16-224
"""

import argparse
import logging

from .run import run_demo
from .settings import FAST, FULL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--out", default="hive-demo", help="A new or empty folder for everything the demo writes (default hive-demo).")
    parser.add_argument("--fast", action="store_true", help="Tiny sizes and a few steps (under 2 minutes; the accuracy means nothing).")
    parser.add_argument("--text-model", help="An LLM's Hub id or folder instead of the tiny one (stage 0 is then skipped).")
    parser.add_argument("--vision-model", help="A vision encoder's Hub id or folder instead of the tiny ViT.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data, the initialisations and the training order.")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_demo(args.out, FAST if args.fast else FULL, text_model=args.text_model, vision_model=args.vision_model, seed=args.seed)
    return 0
