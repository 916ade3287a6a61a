"""Stage 3: joint fine-tuning. Encoder, projectors and cross-attention train; the LLM is frozen or adapted with LoRA.

LoRA is injected in place (`peft.tuners.lora.LoraModel`), so the model stays a `HiveForConditionalGeneration` whose
checkpoints hold every trained weight and resume like any other. At the end the adapter can be written in PEFT's
format and merged into a plain HIVE checkpoint.
"""

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from peft.tuners.lora import LoraModel
from safetensors.torch import save_file

from .hive_trainer import HiveTrainer


QUANTIZED_WEIGHTS = ("Params4bit", "Int8Params")  # bitsandbytes' weight classes (an optional dependency, not imported)


def lora_config(args) -> LoraConfig:
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=args.lora_target_modules)


class HiveFinetuneTrainer(HiveTrainer):
    """Stage 3 trainer: the encoder gets its own, lower learning rate; the LLM gets LoRA when `args.lora_r > 0`, or
    trains whole with `args.train_llm`.

    Args:
        model (`HiveForConditionalGeneration`): the stage-2 model.
        args (`HiveFinetuneConfig`): training arguments.
        **kwargs: as for `Trainer` (data_collator: `HiveChatCollator`, train_dataset with `image` and `messages`).

    Example:
        >>> trainer = HiveFinetuneTrainer(model, HiveFinetuneConfig("out/stage3", lora_r=8, max_steps=100),
        ...                               data_collator=HiveChatCollator(processor), train_dataset=chats)  # doctest: +SKIP
        >>> trainer.train()
        >>> trainer.save_adapter("out/stage3/adapter")  # doctest: +SKIP
    """

    def __init__(self, model, args, components=None, **kwargs):
        self.lora_model = None
        if args.lora_r > 0:
            try:
                self.lora_model = LoraModel(model, lora_config(args), "default")  # injects into `model`, freezes the rest
            except ValueError as error:
                if "not found in the base model" not in str(error):
                    raise
                raise ValueError(
                    f"lora_target_modules={args.lora_target_modules!r} matches no module of this model's LLM. It is a regex "
                    "over full module names (e.g. 'model.language_model.layers.0.self_attn.q_proj'); print "
                    "[name for name, _ in model.named_modules()] to see them, or leave it at its default."
                ) from error
            outside = [name for name, _ in model.named_modules() if name.endswith("lora_A") and ".language_model." not in f".{name}"]
            if outside:
                raise ValueError(f"lora_target_modules must match LLM modules only; it also caught {outside[:3]}.")
        elif getattr(model, "is_quantized", False):
            raise ValueError("a quantized HIVE model trains its LLM through LoRA only (QLoRA): set lora_r > 0.")
        # transformers' own mark of adapters attached in place: with it, Trainer accepts a quantized LLM (QLoRA). Only for
        # that check: left set, it would make save_pretrained write the adapter alone, and checkpoints lose HIVE's weights.
        quantized = getattr(model, "is_quantized", False)
        model._hf_peft_config_loaded = quantized
        try:
            super().__init__(model, args, components=components, **kwargs)
        finally:
            model._hf_peft_config_loaded = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As `Trainer.save_model`. With a quantized LLM (QLoRA) the checkpoint leaves out the quantized weights: they
        never train, `Trainer` cannot load them back into quantized layers on resume, and a resumed run quantizes them
        again from stage 2 (bitsandbytes' quantization is deterministic: the same weights)."""
        quantized = tuple(  # the layers that own a quantized weight (not peft's LoRA wrappers, which only point to it)
            f"{name}."
            for name, module in self.model.named_modules()
            if type(dict(module.named_parameters(recurse=False)).get("weight")).__name__ in QUANTIZED_WEIGHTS
        )
        if not quantized:
            return super().save_model(output_dir, _internal_call)

        def drop_quantized(module, state_dict, prefix, local_metadata):
            for key in [key for key in state_dict if key.startswith(quantized)]:
                del state_dict[key]

        handle = self.model.register_state_dict_post_hook(drop_quantized)
        try:
            return super().save_model(output_dir, _internal_call)
        finally:
            handle.remove()

    @classmethod
    def trainable_components(cls, args):
        # llm=None keeps the LoRA weights trainable and the rest of the LLM frozen (LoraModel froze it).
        llm = None if args.lora_r > 0 else args.train_llm
        return {"vision": args.train_vision, "projector": True, "cross_attention": True, "llm": llm}

    def save_adapter(self, output_dir, base_model_name_or_path: str | None = None, state_dict: dict | None = None) -> None:
        """Writes the LLM's LoRA adapter in PEFT's format; `merge_adapter(base, output_dir)` merges it back. Under FSDP
        pass the model's whole `state_dict`, which `accelerator.get_state_dict` gathered on every process."""
        if self.lora_model is None:
            raise ValueError("this run has no LoRA adapter (lora_r is 0).")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.model, state_dict=state_dict, adapter_name="default")
        # PeftModel keys its weights under `base_model.model.`; the adapter file follows that layout.
        tensors = {f"base_model.model.{key}": value.contiguous() for key, value in state.items()}
        save_file(tensors, output_dir / "adapter_model.safetensors", metadata={"format": "pt"})
        config = self.lora_model.peft_config["default"]
        config.base_model_name_or_path = base_model_name_or_path
        config.save_pretrained(output_dir)

    @staticmethod
    def base_state_dict(state_dict: dict) -> dict:
        """The weights of the adapter's base (what `unload_lora` leaves) from the LoRA model's whole state dict."""
        return {name.replace(".base_layer.", "."): tensor for name, tensor in state_dict.items() if ".lora_" not in name}

    def unload_lora(self):
        """Removes the LoRA layers without merging them and returns the base HIVE model (the adapter's base)."""
        if self.lora_model is None:
            return self.model
        base = self.lora_model.unload()
        self.lora_model = None
        self.model = base
        return base


def merge_adapter(base_model, adapter_dir):
    """Loads a stage-3 LoRA adapter onto its base HIVE model and merges it: a plain HIVE model with no LoRA layers.

    Example:
        >>> base = HiveForConditionalGeneration.from_pretrained("out/stage3/base")  # doctest: +SKIP
        >>> merge_adapter(base, "out/stage3/adapter").save_pretrained("out/merged")  # doctest: +SKIP
    """
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
