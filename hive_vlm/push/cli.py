"""`hive push`: upload a saved HIVE folder to the Hub, admitting only the files a user needs to load it.

Example:
    $ hive push --model outputs/tiny-shapes/final --repo-id my-org/hive-tiny --private
    $ hive push --model outputs/tiny-shapes/final --repo-id my-org/hive-tiny --dry-run upload-preview/
"""

import sys

from hive_vlm.hub.push import check_repo_id, dry_run, push_folder


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="Saved HIVE folder, e.g. outputs/tiny-shapes/final.")
    parser.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME (created when missing).")
    parser.add_argument("--private", action="store_true", help="Create the repository private.")
    parser.add_argument("--revision", help="Branch to push to (created from main when missing).")
    parser.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    parser.add_argument("--commit-message", help="Title of the commit.")
    parser.add_argument("--dry-run", metavar="OUT", help="Copy the files that would be uploaded into OUT and upload nothing.")


def run(args) -> int:
    check_repo_id(args.repo_id)
    if args.dry_run:
        files = dry_run(args.model, args.dry_run)
        print(f"dry run: {len(files)} files that would go to {args.repo_id} copied to {args.dry_run}:")
        for name in files:
            print(f"  {name}")
        return 0
    try:
        info = push_folder(
            args.model, args.repo_id, private=args.private or None, revision=args.revision, create_pr=args.create_pr,
            commit_message=args.commit_message,
        )  # fmt: skip
    except RuntimeError as error:
        print(f"hive push: error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.model} to {args.repo_id}: {info.pr_url or info.commit_url}")
    return 0
