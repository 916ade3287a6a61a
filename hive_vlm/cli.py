"""The `hive` command. Each subcommand lives in its own module, imported only when that subcommand runs.

`hive <command>` is the `cli.py` of its own package, `hive_vlm.<command>` (`-` read as `_`; `hive ablate`'s is
`hive_vlm.ablation`, the study it runs). That module defines `add_arguments(parser)` and `run(args) -> int | None`;
the code it runs lives in the layers (`hive_vlm.training`, `hive_vlm.eval`, ...) and the command's own package.

Example:
    $ hive data shapes --out shapes/ --seed 0
    $ hive --help
"""

import argparse
import importlib
import sys

# name -> (its cli module, one-line help). Modules are imported lazily so `hive --help` stays fast.
COMMANDS = {
    "data": ("hive_vlm.data.cli", "Generate hive-shapes or inspect training data."),
    "train": ("hive_vlm.train.cli", "Run a recipe's stages (the three HIVE stages, after stage 0 when it has one), or one of them."),
    "export-vision": ("hive_vlm.export_vision.cli", "Write the trained encoder as a plain transformers model."),
    "eval": ("hive_vlm.eval.cli", "Score a model on MME, GQA, OK-VQA, ScienceQA-IMG, hive-shapes, a LLaVA-format test file or a probe."),
    "card": ("hive_vlm.card.cli", "Write the model card of a saved HIVE folder."),
    "push": ("hive_vlm.push.cli", "Upload a saved HIVE folder to the Hub through an allow-list."),
    "demo": ("hive_vlm.demo.cli", "The whole method end to end on one machine, offline."),
    "visualize": ("hive_vlm.visualize.cli", "Draw the per-level cross-attention maps and gates."),
    "ablate": ("hive_vlm.ablation.cli", "Compare fusion strategies on equal terms."),
    "transfer": ("hive_vlm.transfer.cli", "Compare pre-trained encoders after transfer into LLaVA (the paper's protocol)."),
    "bench": ("hive_vlm.bench.cli", "Measure HIVE against LLaVA-style fusion."),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hive", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help, or the usage error naming the unknown command
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2

    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            print(f"hive: the '{name}' command is not available in this version.", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"hive {name}", description=help_text)
    module.add_arguments(sub)
    if any(isinstance(action, argparse._SubParsersAction) for action in sub._actions):
        args = sub.parse_args(argv[1:])  # commands with sub-commands (hive data shapes ...) cannot intermix
    else:
        args = sub.parse_intermixed_args(argv[1:])  # `key=value` overrides may come before or after options
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, not a traceback
        print(f"hive {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
