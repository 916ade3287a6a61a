"""Stage 2: hierarchical alignment. The LLM is frozen; projectors and cross-attention blocks learn from image-text pairs."""

from .hive_trainer import HiveTrainer


class HiveAlignmentTrainer(HiveTrainer):
    """Stage 2 trainer. The encoder trains only when `args.train_vision` (the paper keeps it frozen).

    Args:
        model (`HiveForConditionalGeneration`): the HIVE model (gates at `gate_init`).
        args (`HiveAlignmentConfig`): training arguments.
        **kwargs: as for `Trainer` (data_collator: `HiveCaptionCollator`, train_dataset with `image` and `text`).

    Example:
        >>> trainer = HiveAlignmentTrainer(model, HiveAlignmentConfig("out/stage2", max_steps=100),
        ...                                data_collator=HiveCaptionCollator(processor), train_dataset=pairs)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    def trainable_components(self, args):
        return {"vision": args.train_vision, "projector": True, "cross_attention": True, "llm": False}
