"""The trained encoder of a HIVE folder as a standard transformers vision model (`hive export-vision`'s library).

Example:
    >>> from transformers import AutoModel
    >>> encoder = AutoModel.from_pretrained("outputs/tiny/encoder")  # no trust_remote_code needed  # doctest: +SKIP
"""

from pathlib import Path

from transformers import AutoImageProcessor

from hive_vlm.files import atomic_folder
from modeling_hive import HiveForConditionalGeneration


def export_vision(model_dir: str, out_dir: str) -> str:
    """Writes `model.vision_model` (and the image processor, when the folder has one) to `out_dir`."""
    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"{model_dir} has no config.json; pass the folder of a saved HIVE model (e.g. <run>/final).")
    model = HiveForConditionalGeneration.from_pretrained(model_dir)
    with atomic_folder(Path(out_dir)) as out:
        model.model.vision_model.save_pretrained(out)
        try:
            AutoImageProcessor.from_pretrained(model_dir, backend="pil").save_pretrained(out)
        except (OSError, ValueError):
            pass  # a folder without an image processor exports the weights alone
    return str(out_dir)
