"""A small word-level tokenizer built offline from a text corpus, for tiny LLMs and the offline demo."""

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modeling_hive.processing_hive import HIVE_CHAT_TEMPLATE


PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Words the default chat template writes around every turn.
CHAT_TEMPLATE_WORDS = ("user", "assistant", "system", ":")


def _word_splitter() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return normalizer, pre_tokenizer


def build_tokenizer(
    corpus: Iterable[str],
    vocab_size: int | None = None,
    min_frequency: int = 1,
    chat_template: str | None = HIVE_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """
    Build a word-level tokenizer from a text corpus, offline, with the `tokenizers` library.

    Text is NFKC-normalised and lowercased, split on whitespace, and every punctuation character becomes its own
    token; digits stay inside their word ("12" is one token). The vocabulary holds `<pad>` (id 0), `<bos>` (1),
    `<eos>` (2), `<unk>` (3), then the chat template's words (`user`, `assistant`, `system`, `:`), then the corpus
    words by decreasing frequency (ties in alphabetical order), so the same corpus always gives the same ids.
    Encoding prepends `<bos>`; unknown words map to `<unk>`; decoding joins words with single spaces. Padding goes
    on the left, as generation needs.

    Args:
        corpus (`Iterable[str]`):
            Texts to take the vocabulary from, e.g. hive-shapes captions, questions and answers.
        vocab_size (`int`, *optional*):
            Upper bound on the vocabulary size, special tokens and chat-template words included. Defaults to every
            word of the corpus.
        min_frequency (`int`, *optional*, defaults to 1):
            Corpus words seen fewer times are left out (they encode as `<unk>`).
        chat_template (`str`, *optional*, defaults to `HIVE_CHAT_TEMPLATE`):
            Chat template stored on the tokenizer; `None` for none.

    Returns:
        [`PreTrainedTokenizerFast`] with `pad_token`, `bos_token`, `eos_token` and `unk_token` set.

    Example:
        ```python
        >>> tokenizer = build_tokenizer(["a red circle.", "what colour is the circle?", "red"])
        >>> tokenizer.decode(tokenizer("a red circle.")["input_ids"], skip_special_tokens=True)
        'a red circle .'
        ```
    """
    if isinstance(corpus, str):
        raise TypeError("`corpus` must be an iterable of texts, not a single string; wrap it in a list.")
    if min_frequency < 1:
        raise ValueError(f"`min_frequency` must be at least 1, got {min_frequency}.")
    reserved = list(SPECIAL_TOKENS) + list(CHAT_TEMPLATE_WORDS)
    if vocab_size is not None and vocab_size < len(reserved):
        raise ValueError(
            f"`vocab_size` must be at least {len(reserved)} (special tokens and chat words), got {vocab_size}."
        )

    normalizer, pre_tokenizer = _word_splitter()
    counts = Counter()
    num_texts = 0
    for index, text in enumerate(corpus):
        if not isinstance(text, str):
            raise TypeError(f"corpus item {index} is a {type(text).__name__}, not a string.")
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
        num_texts += 1
    if not counts:
        raise ValueError(f"The corpus ({num_texts} texts) holds no words to build a vocabulary from.")

    vocab = {token: index for index, token in enumerate(reserved)}
    ranked = sorted(
        (word for word, count in counts.items() if count >= min_frequency and word not in vocab),
        key=lambda word: (-counts[word], word),
    )
    if vocab_size is not None:
        ranked = ranked[: vocab_size - len(vocab)]
    for word in ranked:
        vocab[word] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B:1",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        chat_template=chat_template,
    )
