"""The prompts of the published evaluation protocols, shared by the evaluation adapters and the training text
built in their layouts (the stage-3 chats of hive-shapes), so that both write them one way."""

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."  # MME, GQA, OK-VQA (LLaVA-1.5)
ANSWER_WITH_LETTER = "\nAnswer with the option's letter from the given choices directly."  # ScienceQA (LLaVA-1.5)


def mme_prompt(question: str) -> str:
    """MME's yes/no question with its own suffix replaced by the short-answer prompt (LLaVA-1.5's MME prompt)."""
    return question.strip().replace(" Please answer yes or no.", "") + SHORT_ANSWER_PROMPT


def scienceqa_prompt(hint: str, question: str, choices) -> str:
    """ScienceQA's context (when there is one), question and lettered choices, then the answer-with-letter prompt."""
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{chr(ord('A') + index)}. {choice}" for index, choice in enumerate(choices))
    return f"{context}{question}\n{options}{ANSWER_WITH_LETTER}"
