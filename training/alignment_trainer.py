"""Stage 2: hierarchical alignment. Projectors and cross-attention blocks learn from image-text pairs; the LLM is frozen
(unless `train_llm`, as the authors' code trains it)."""

from .hive_trainer import HiveTrainer


class HiveAlignmentTrainer(HiveTrainer):
    """Stage 2 trainer. The encoder trains only when `args.train_vision` (the paper keeps it frozen), the LLM only when
    `args.train_llm` (all of it but its embeddings and head with `train_llm_embeddings=False`, the authors' setting).

    Args:
        model (`HiveForConditionalGeneration`): the HIVE model (gates at `gate_init`).
        args (`HiveAlignmentConfig`): training arguments.
        **kwargs: as for `Trainer` (data_collator: `HiveCaptionCollator`, train_dataset with `image` and `text`).

    Example:
        >>> trainer = HiveAlignmentTrainer(model, HiveAlignmentConfig("out/stage2", max_steps=100),
        ...                                data_collator=HiveCaptionCollator(processor), train_dataset=pairs)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    @classmethod
    def trainable_components(cls, args):
        return {"vision": args.train_vision, "projector": True, "cross_attention": True, "llm": args.train_llm}
