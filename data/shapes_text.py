"""The text `hive demo` and `hive ablate` train on, built from hive-shapes scenes.

    shapes_conversations   stage-3 chats: short answers, MME-style yes/no and ScienceQA-style multiple choice
    CAPTION_PROMPT         the prompt stage 2 puts before every caption

A recipe asks for these chats with `data.shapes.turns_per_chat`; stage 0 pretrains a tiny LLM on them and on the
captions (`hive_vlm.training.lm_trainer.pretraining_sequences`).

Example:
    >>> from hive_vlm.data.shapes import generate_shapes
    >>> scenes = generate_shapes(num_train=2, num_validation=0, num_test=0, num_test_compositional=0)["train"]
    >>> chats = shapes_conversations(scenes)  # 6 questions, 2 yes/no, 1 multiple choice: 9 turns, 3 chats per scene
    >>> len(chats), len(chats[0]["messages"])
    (6, 6)
"""

import datasets
import numpy as np

from hive_vlm.data.prompts import SHORT_ANSWER_PROMPT, mme_prompt, scienceqa_prompt
from hive_vlm.data.schema import chat_features, text_message


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
    if turns_per_chat < 1:
        raise ValueError(f"turns_per_chat must be at least 1, got {turns_per_chat}.")

    def convert(batch, indices):
        rows = {"image": [], "messages": []}
        for index, image, questions, yes_no in zip(indices, batch["image"], batch["questions"], batch["yes_no"]):
            rng = np.random.default_rng([seed, index])
            turns = [(q["question"] + SHORT_ANSWER_PROMPT, q["answer"]) for q in questions]
            turns += [(mme_prompt(pair["question"]), pair["answer"]) for pair in yes_no]
            asked = questions[int(rng.integers(len(questions)))]
            turns.append((scienceqa_prompt("", asked["question"], asked["choices"]), chr(ord("A") + asked["choices"].index(asked["answer"]))))
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

