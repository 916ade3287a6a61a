"""Arguments of stage 0: causal-LM pretraining of the LLM on text, for a recipe whose LLM is not pretrained yet."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class HiveLMConfig(TrainingArguments):
    """`TrainingArguments` with stage 0's defaults: cosine decay after a linear warm-up over the first 5% of the steps,
    weight decay 0.01.

    Example:
        >>> from hive_vlm.training.lm_config import HiveLMConfig
        >>> HiveLMConfig(output_dir="out/stage0", max_steps=150, use_cpu=True).warmup_steps
        7
    """

    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after the warm-up."})
    warmup_steps: float | None = field(default=None, metadata={"help": "Warm-up steps; 5% of max_steps (at least 1) when unset."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_length: int | None = field(default=None, metadata={"help": "Longest sequence in tokens; the recipe's data.max_length when unset."})

    def __post_init__(self):
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.max_steps // 20) if self.max_steps > 0 else 0
        super().__post_init__()
