"""`hive export-vision`: the trained encoder of a HIVE folder as a standard transformers vision model.

Example:
    $ hive export-vision --model outputs/tiny/final --out outputs/tiny/encoder
    >>> from transformers import AutoModel
    >>> encoder = AutoModel.from_pretrained("outputs/tiny/encoder")  # no trust_remote_code needed  # doctest: +SKIP
"""

from hive_vlm.training.export_vision import export_vision


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="A saved HIVE folder.")
    parser.add_argument("--out", required=True, help="Folder for the exported encoder.")


def run(args) -> int:
    print(f"encoder written to {export_vision(args.model, args.out)}")
    return 0
