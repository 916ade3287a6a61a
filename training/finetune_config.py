"""Arguments of stage 3: joint fine-tuning of encoder and cross-attention, the LLM frozen or adapted with LoRA."""

import importlib.util
import inspect
from dataclasses import dataclass, field

from transformers import BitsAndBytesConfig, TrainingArguments

from .alignment_config import refuse_label_smoothing


# LoRA targets restricted to the LLM: a regex over full module names, so the encoder's q/k/v are never caught.
# `(.*\.)?`: HIVE and LLaVA hold the LLM at `model.language_model`, BLIP-2 at the top (`language_model.`).
LLM_LORA_TARGETS = r"(.*\.)?language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)$"


@dataclass
class HiveFinetuneConfig(TrainingArguments):
    """`TrainingArguments` plus the encoder's own learning rate and the LLM's LoRA settings.

    Example:
        >>> from hive_vlm.training.finetune_config import HiveFinetuneConfig
        >>> args = HiveFinetuneConfig(output_dir="out/stage3", learning_rate=1e-4, vision_learning_rate=1e-5, lora_r=8)
    """

    vision_learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate of the vision encoder (lower than the rest)."})
    train_vision: bool = field(default=True, metadata={"help": "Train the vision encoder in stage 3."})
    train_llm: bool = field(default=False, metadata={"help": "Train the whole LLM (no LoRA), at learning_rate."})
    train_llm_embeddings: bool = field(
        default=True, metadata={"help": "With train_llm: its input embeddings and output head train too (false: the authors' setting)."}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM; 0 keeps the LLM frozen."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(default=LLM_LORA_TARGETS, metadata={"help": "Regex over full module names; must stay inside the LLM."})
    quantization: dict | None = field(
        default=None,
        metadata={
            "help": "QLoRA: load the stage-2 model's LLM quantized by bitsandbytes, with these `BitsAndBytesConfig` fields "
            "(e.g. {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16}). The encoder, "
            "projectors and cross-attention stay unquantized and train; the LLM trains through LoRA (lora_r > 0), which "
            "is merged into its unquantized weights at the end. Needs the `quantization` extra."
        },
    )
    max_length: int | None = field(default=None, metadata={"help": "Longest sequence in tokens; the recipe's data.max_length when unset."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw image columns for the collator."})

    def __post_init__(self):
        super().__post_init__()
        refuse_label_smoothing(self)
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be 0 (LLM frozen) or a positive rank, got {self.lora_r}.")
        if self.train_llm and self.lora_r > 0:
            raise ValueError("train_llm trains the whole LLM and lora_r adapts it through LoRA: set one of them, not both.")
        if self.vision_learning_rate < 0:
            raise ValueError(f"vision_learning_rate must be non-negative, got {self.vision_learning_rate}.")
        if self.quantization is not None:
            self.quantization_config()  # refuses a bad setting now, before any stage runs

    def quantization_config(self) -> BitsAndBytesConfig | None:
        """The `BitsAndBytesConfig` that `quantization` describes (None without it); refuses a bad setting by name."""
        if self.quantization is None:
            return None
        if not isinstance(self.quantization, dict):
            raise ValueError(f"quantization must be a mapping of BitsAndBytesConfig fields, got {self.quantization!r}.")
        known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(set(self.quantization) - known)
        if unknown:
            raise ValueError(f"quantization: unknown key(s) {unknown}; BitsAndBytesConfig takes {sorted(known)}.")
        if not (self.quantization.get("load_in_4bit") or self.quantization.get("load_in_8bit")):
            raise ValueError("quantization needs load_in_4bit: true (QLoRA) or load_in_8bit: true.")
        quant_type = self.quantization.get("bnb_4bit_quant_type", "fp4")
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quantization: bnb_4bit_quant_type must be nf4 or fp4, got {quant_type!r}.")
        if self.lora_r == 0:
            raise ValueError(
                "quantization needs lora_r > 0: a quantized LLM cannot be trained in full, only through LoRA (QLoRA)."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("quantization needs bitsandbytes: pip install 'hive-vlm[quantization]'.")
        try:
            return BitsAndBytesConfig(**self.quantization)
        except (TypeError, ValueError) as error:
            raise ValueError(f"quantization: {error}") from error
