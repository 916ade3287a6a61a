"""Stage 0: the LLM pretrained as a causal LM on the text of the recipe's training data, so that a tiny or new LLM can
express answers through its frozen head before HIVE connects an encoder to it."""

import datasets
from transformers import DataCollatorForLanguageModeling, Trainer

from hive_vlm.data.schema import message_text

from .callbacks import HiveCheckpointMarkerCallback


def pretraining_sequences(captions, conversations, tokenizer, chat_template: str, max_length: int,
                          caption_prompt: str) -> list[list[int]]:
    """Stage 0's token sequences: every caption as stage 2 sees it (`caption_prompt`, caption, eos) and every chat
    rendered by `chat_template` with its images left out, each cut at `max_length` tokens.

    Args:
        captions (`Iterable[str]`): stage 2's captions.
        conversations (`Iterable[list[dict]]`): stage 3's chats (`messages` in `hive_vlm.data.schema`'s layout).
        tokenizer: the run's tokenizer.
        chat_template (`str`): the processor's chat template.
        max_length (`int`): the longest sequence in tokens.
        caption_prompt (`str`): the text stage 2 puts before every caption.
    """
    prompt = tokenizer(caption_prompt)["input_ids"]
    sequences = [(prompt + tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length]
                 for caption in captions]  # fmt: skip
    for messages in conversations:
        plain = [{"role": m["role"], "content": message_text(m)} for m in messages]
        text = tokenizer.apply_chat_template(plain, tokenize=False, chat_template=chat_template)
        sequences.append(tokenizer(text, add_special_tokens=False)["input_ids"][:max_length])
    return sequences


class HiveLMTrainer(Trainer):
    """Stage 0 trainer: a plain causal-LM `Trainer` over token sequences, padded per batch, with the completed-checkpoint
    markers of the other stages (an interrupted run resumes from its last complete checkpoint).

    Args:
        model (`PreTrainedModel`): a causal LM.
        args (`HiveLMConfig`): training arguments.
        tokenizer: pads the batches (`DataCollatorForLanguageModeling`, mlm=False).
        sequences (`list[list[int]]`): the token sequences (`pretraining_sequences`).

    Example:
        >>> trainer = HiveLMTrainer(llm, HiveLMConfig("out/stage0", max_steps=150), tokenizer, sequences)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(self, model, args, tokenizer, sequences: list[list[int]], **kwargs):
        if not sequences:
            raise ValueError("stage 0 has no text to train on: stages 2 and 3 of the recipe give no captions or chats.")
        callbacks = [HiveCheckpointMarkerCallback(), *(kwargs.pop("callbacks", None) or [])]
        super().__init__(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": sequences}),
                         data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks, **kwargs)  # fmt: skip
