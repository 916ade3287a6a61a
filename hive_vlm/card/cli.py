"""`hive card`: write the model card (README.md) of a saved HIVE folder, with its evaluation results as a model-index.

Example:
    $ hive card --model outputs/tiny-shapes/final --results eval_results/hive-shapes.json --license apache-2.0
    $ hive card --model outputs/tiny-shapes/final --repo-id my-org/hive-tiny --results eval_results/mme.json
"""

from huggingface_hub import ModelCard

from hive_vlm.hub.card import DEFAULT_LICENSE, write_model_card


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="Saved HIVE folder, e.g. outputs/tiny-shapes/final.")
    parser.add_argument("--results", nargs="+", action="extend", default=[], metavar="JSON", help="`hive eval` results files.")
    parser.add_argument("--repo-id", help="Hub repository ORG/NAME: the model's name in the card and its examples.")
    parser.add_argument("--license", help=f"Hub licence id, e.g. apache-2.0 (default: the previous card's, else {DEFAULT_LICENSE}).")
    parser.add_argument("--dataset", action="append", metavar="ORG/NAME", help="Training dataset Hub id (repeatable).")
    parser.add_argument("--base-model", action="append", metavar="ORG/NAME", help="Backbone Hub id, overriding those found (repeatable).")
    parser.add_argument("--reset-results", action="store_true", help="Drop the results of the previous card; keep only --results.")
    parser.add_argument("--allow-other-model", action="store_true", help="Accept results computed on a model with another config.json.")


def run(args) -> int:
    path = write_model_card(
        args.model,
        args.results,
        repo_id=args.repo_id,
        license=args.license,
        datasets=args.dataset,
        base_model=args.base_model,
        keep_results=not args.reset_results,
        allow_other_model=args.allow_other_model,
    )
    card = ModelCard.load(path)
    print(f"wrote {path} ({len(card.data.eval_results or [])} evaluation result(s))")
    return 0
