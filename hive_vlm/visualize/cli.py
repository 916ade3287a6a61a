"""`hive visualize`: what a HIVE model looks at, one cross-attention map per connected vision level, and its gates.

Each level's panel shows, over the image, the cross-attention weights of the blocks that read that vision layer,
averaged over heads and over the question's token positions, on the encoder's patch grid (CLS and other extra
tokens dropped). The last panel shows tanh of every block's attention and MLP gate: how much each pathway adds to
the LLM.

Example:
    $ hive visualize --model hive-demo/model --image hive-demo/fresh_scene.png \\
        --question "What color is the circle?" --out attention.png
"""

import argparse
from pathlib import Path

import numpy as np

from .maps import visualize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--model", required=True, help="A saved HIVE folder.")
    parser.add_argument("--image", required=True, help="The image file.")
    parser.add_argument("--question", required=True, help="The question to ask about it.")
    parser.add_argument("--out", required=True, help="The PNG to write.")
    parser.add_argument("--device", help="Device (default: cuda when available, else cpu).")


def run(args) -> int:
    if not Path(args.image).is_file():
        raise ValueError(f"--image {args.image!r} does not exist.")
    figure = visualize(args.model, args.image, args.question, args.out, device=args.device)
    print(f"answer: {figure.answer!r}")
    for level in figure.levels:
        print(f"vision layer {level.vision_layer} -> LLM layer(s) {level.text_layers}: peak at patch "
              f"{np.unravel_index(level.weights.argmax(), level.weights.shape)}")  # fmt: skip
    print(f"wrote {figure.path} ({figure.num_level_panels} level panels + image + gates)")
    return 0
