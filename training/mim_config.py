"""Arguments of stage 1: masked image modelling on the vision encoder alone."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class HiveMIMConfig(TrainingArguments):
    """`TrainingArguments` plus SimMIM's settings.

    Example:
        >>> from hive_vlm.training.mim_config import HiveMIMConfig
        >>> args = HiveMIMConfig(output_dir="out/stage1", mask_ratio=0.6, max_steps=100)
    """

    mask_ratio: float = field(default=0.6, metadata={"help": "Share of image blocks masked per image."})
    mask_patch_size: int | None = field(
        default=None, metadata={"help": "Side of a masked block in pixels (a multiple of the patch size); when unset, the pixels one last-layer token reconstructs (a patch for a ViT, a last-stage cell for Swin)."}
    )
    norm_pix_loss: bool = field(default=True, metadata={"help": "Predict per-patch normalised pixels (mean 0, variance 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw image columns for the collator."})
