"""The text `hive demo` and `hive ablate` train on, built from hive-shapes scenes.

    shapes_conversations   stage-3 chats: short answers, MME-style yes/no and ScienceQA-style multiple choice
    pretraining_sequences  stage 0's token sequences: every caption as stage 2 sees it and every chat, images left out

Both the demo and the ablation harness pretrain their tiny LLM on exactly these sequences (HIVE assumes a
pretrained LLM, and none can be downloaded here), so the two share one definition.

Example:
    >>> from hive_vlm.data.shapes import generate_shapes
    >>> scenes = generate_shapes(num_train=2, num_validation=0, num_test=0, num_test_compositional=0)["train"]
    >>> chats = shapes_conversations(scenes)  # 6 questions, 2 yes/no, 1 multiple choice: 9 turns, 3 chats per scene
    >>> len(chats), len(chats[0]["messages"])
    (6, 6)
"""

CAPTION_PROMPT = "Describe the image."


def shapes_conversations(scenes, seed: int = 0, turns_per_chat: int = 3):
    """Stage-3 chats: per scene, its questions in the short-answer layout, its yes/no pair in MME's layout and one
    question in ScienceQA's multiple-choice layout, shuffled per scene and cut into chats of `turns_per_chat` turns,
    each with the scene's image in its first turn. The prompts are the evaluation adapters' own, so every benchmark
    view's format is seen in training. Short chats keep sequences (and attention) short on a CPU.

    Args:
        scenes (`datasets.Dataset`): hive-shapes scenes (one row per scene).
        seed (`int`): seeds the per-scene turn order and the multiple-choice question.
        turns_per_chat (`int`): question-answer turns per chat (the last chat of a scene may have fewer).

    Returns:
        `datasets.Dataset` with `image` and `messages` (`hive_vlm.data.schema.chat_features`).
    """
    import datasets
    import numpy as np

    from hive_vlm.data.schema import chat_features, text_message
    from hive_vlm.data.shapes_layouts import SHORT_ANSWER_PROMPT
    from hive_vlm.eval.mme import HiveMMEBenchmark
    from hive_vlm.eval.scienceqa import HiveScienceQABenchmark

    if turns_per_chat < 1:
        raise ValueError(f"turns_per_chat must be at least 1, got {turns_per_chat}.")
    mme, scienceqa = HiveMMEBenchmark(), HiveScienceQABenchmark()

    def convert(batch, indices):
        rows = {"image": [], "messages": []}
        for index, image, questions, yes_no in zip(indices, batch["image"], batch["questions"], batch["yes_no"]):
            rng = np.random.default_rng([seed, index])
            turns = [(q["question"] + SHORT_ANSWER_PROMPT, q["answer"]) for q in questions]
            turns += [(mme.build_prompt(pair), pair["answer"]) for pair in yes_no]
            asked = questions[int(rng.integers(len(questions)))]
            choice = {"hint": "", "question": asked["question"], "choices": asked["choices"]}
            turns.append((scienceqa.build_prompt(choice), chr(ord("A") + asked["choices"].index(asked["answer"]))))
            order = rng.permutation(len(turns))
            for start in range(0, len(order), turns_per_chat):
                messages = []
                for rank, turn in enumerate(order[start : start + turns_per_chat]):
                    prompt, answer = turns[turn]
                    messages.append(text_message("user", prompt, with_image=rank == 0))
                    messages.append(text_message("assistant", answer))
                rows["image"].append(image)
                rows["messages"].append(messages)
        return rows

    raw = scenes.cast_column("image", datasets.Image(decode=False))
    return raw.map(convert, batched=True, with_indices=True, remove_columns=raw.column_names, features=chat_features(),
                   desc="stage-3 chats")  # fmt: skip


def pretraining_sequences(scenes, conversations, tokenizer, chat_template: str, max_length: int) -> list[list[int]]:
    """Stage 0's token sequences: every caption as stage 2 sees it (`CAPTION_PROMPT`, caption, eos) and every chat
    of `conversations` rendered by `chat_template`, images left out, cut at `max_length` tokens."""
    from hive_vlm.data.schema import message_text

    prompt = tokenizer(CAPTION_PROMPT)["input_ids"]
    sequences = [prompt + tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for caption in scenes["caption"]]  # fmt: skip
    for messages in conversations["messages"]:
        plain = [{"role": m["role"], "content": message_text(m)} for m in messages]
        text = tokenizer.apply_chat_template(plain, tokenize=False, chat_template=chat_template)
        sequences.append(tokenizer(text, add_special_tokens=False)["input_ids"][:max_length])
    return sequences
