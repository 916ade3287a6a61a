"""Arguments of stage 2: hierarchical alignment, the LLM frozen (or trained, `train_llm`, as the authors' code trains it)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


def refuse_label_smoothing(args: TrainingArguments) -> None:
    """transformers' Trainer shifts the labels of a smoothed loss only for models in its causal-LM list, which HIVE (and a
    study's LLaVA and BLIP-2) are not: each position would be scored against its own token. Refused, not ignored."""
    if args.label_smoothing_factor:
        raise ValueError(f"label_smoothing_factor ({args.label_smoothing_factor}): the Trainer would smooth an unshifted loss for a "
                         "HIVE model (every position scored against its own token, not the next); set it to 0.")  # fmt: skip


@dataclass
class HiveAlignmentConfig(TrainingArguments):
    """`TrainingArguments` plus what stage 2 trains and how captions are prompted.

    Example:
        >>> from hive_vlm.training.alignment_config import HiveAlignmentConfig
        >>> args = HiveAlignmentConfig(output_dir="out/stage2", train_vision=False, max_steps=100)
    """

    train_vision: bool = field(default=False, metadata={"help": "Also train the vision encoder (the paper keeps it frozen)."})
    vision_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision encoder when train_vision; learning_rate when unset."}
    )
    train_llm: bool = field(
        default=False, metadata={"help": "Also train the LLM, at learning_rate (the paper keeps it frozen; the authors' code trains it)."}
    )
    train_llm_embeddings: bool = field(
        default=True, metadata={"help": "With train_llm: its input embeddings and output head train too (false: the authors' setting)."}
    )
    caption_prompt: str = field(default="Describe the image.", metadata={"help": "Text before every caption; masked out of the loss."})
    max_length: int | None = field(default=None, metadata={"help": "Longest sequence in tokens; the recipe's data.max_length when unset."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw image columns for the collator."})

    def __post_init__(self):
        super().__post_init__()
        refuse_label_smoothing(self)
