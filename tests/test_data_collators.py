"""Collators: masked positions and labels checked exactly against hand-derived sequences; truncation, drops,
samples without an image."""

import inspect
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil, ViTModel

from hive_vlm.data.collators import (
    IGNORE_INDEX,
    HiveCaptionCollator,
    HiveChatCollator,
    HiveMaskedImageCollator,
    assistant_spans,
)
from hive_vlm.data.report import HiveDataReport
from hive_vlm.data.schema import text_message

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
WORDS = "describe the image a red circle blue square what color is it? and shape? hi be brief.".split()
VOCAB = {token: i for i, token in enumerate(SPECIALS + WORDS)}
PLAIN_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}")
GENERATION_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + ' <|end|> ' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + ' <|end|> ' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def ids(text):
    """Token ids of whitespace-separated tokens, read from the vocabulary (not through the tokenizer)."""
    return [VOCAB[token] for token in text.split()]


def make_tokenizer(bos=True, eos="</s>", template=PLAIN_TEMPLATE):
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", VOCAB["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token=eos,
                                        unk_token="<unk>")
    tokenizer.chat_template = template
    return tokenizer


IMAGE_PROCESSOR = ViTImageProcessorPil(size={"height": 32, "width": 32})


def make_processor(**tokenizer_options):
    return SimpleNamespace(image_processor=IMAGE_PROCESSOR, tokenizer=make_tokenizer(**tokenizer_options))


def red_image():
    return Image.new("RGB", (40, 24), (255, 0, 0))


BATCH_KEYS = {"input_ids", "attention_mask", "labels", "pixel_values", "image_mask"}


def test_batch_keys_are_what_the_model_forward_takes():
    from modeling_hive.modeling_hive import HiveForConditionalGeneration

    parameters = inspect.signature(HiveForConditionalGeneration.forward).parameters
    assert BATCH_KEYS <= set(parameters)


# Stage 1

def image_examples(count):
    return [{"image": Image.new("RGB", (36 + i, 30), (40 * i, 0, 0))} for i in range(count)]


def test_masked_image_collator_masks_exactly_the_ratio():
    collate = HiveMaskedImageCollator(make_processor(), patch_size=8, mask_ratio=0.5, seed=0)
    examples = image_examples(3)
    batch = collate(examples)
    assert set(batch) == {"pixel_values", "bool_masked_pos"}
    assert torch.equal(batch["pixel_values"],
                       IMAGE_PROCESSOR(images=[e["image"] for e in examples], return_tensors="pt")["pixel_values"])
    mask = batch["bool_masked_pos"]
    assert mask.dtype == torch.bool and mask.shape == (3, 16)  # (32 / 8) ** 2 patches
    assert mask.sum(dim=1).tolist() == [8, 8, 8]
    assert not torch.equal(mask[0], mask[1]) or not torch.equal(mask[1], mask[2])


def test_mask_blocks_cover_whole_groups_of_patches():
    collate = HiveMaskedImageCollator(make_processor(), patch_size=8, mask_ratio=0.75, mask_patch_size=16, seed=1)
    mask = collate(image_examples(4))["bool_masked_pos"].view(4, 4, 4)  # (B, rows, columns) of 8-pixel patches
    blocks = mask.view(4, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(4, 4, 4)  # (B, block, patch in block)
    assert (blocks.all(dim=2) | ~blocks.any(dim=2)).all()  # each 16-pixel block is masked whole or not at all
    assert blocks.all(dim=2).sum(dim=1).tolist() == [3, 3, 3, 3]  # round(0.75 * 4) blocks


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (1.0, 16), (0.3, 5)])
def test_mask_ratio_extremes(ratio, expected):
    collate = HiveMaskedImageCollator(make_processor(), patch_size=8, mask_ratio=ratio)
    mask = collate(image_examples(2))["bool_masked_pos"]
    assert mask.sum(dim=1).tolist() == [expected, expected]


def test_mask_is_reproducible_with_a_seed():
    first = HiveMaskedImageCollator(make_processor(), patch_size=8, seed=3)
    second = HiveMaskedImageCollator(make_processor(), patch_size=8, seed=3)
    other = HiveMaskedImageCollator(make_processor(), patch_size=8, seed=4)
    masks = [collate(image_examples(4))["bool_masked_pos"] for collate in (first, first, second, second, other)]
    assert torch.equal(masks[0], masks[2]) and torch.equal(masks[1], masks[3])
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[4])


def test_mask_feeds_a_vit_with_a_mask_token():
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)
    batch = HiveMaskedImageCollator(make_processor(), patch_size=8, seed=0)(image_examples(2))
    hidden = ViTModel(config, use_mask_token=True)(**batch).last_hidden_state
    assert hidden.shape == (2, 17, 16)


def test_masked_image_collator_drops_examples_without_an_image():
    report = HiveDataReport()
    collate = HiveMaskedImageCollator(make_processor(), patch_size=8, report=report)
    batch = collate([{"image": None}] + image_examples(1))
    assert batch["pixel_values"].shape[0] == 1 and report.dropped == 1
    with pytest.raises(ValueError, match="no example of this batch has an image"):
        collate([{"image": None}])


@pytest.mark.parametrize("options, message", [
    ({"patch_size": 8, "mask_patch_size": 12}, "mask_patch_size \\(12\\) must be a multiple of patch_size \\(8\\)"),
    ({"mask_ratio": 1.5}, "mask_ratio must lie in"),
])
def test_masked_image_collator_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        HiveMaskedImageCollator(make_processor(), **options)


def test_image_size_must_tile_into_mask_blocks():
    processor = SimpleNamespace(image_processor=ViTImageProcessorPil(size={"height": 36, "width": 36}))
    with pytest.raises(ValueError, match="36x36 is not a multiple of mask_patch_size 16"):
        HiveMaskedImageCollator(processor, patch_size=16)(image_examples(1))


# Stage 2

def test_caption_collator_labels_only_the_caption():
    processor = make_processor()
    batch = HiveCaptionCollator(processor, prompt="describe the image")(
        [{"image": red_image(), "text": "a red circle"}, {"image": None, "text": "blue square"}])
    assert set(batch) == BATCH_KEYS
    pad = VOCAB["<pad>"]
    assert batch["input_ids"].tolist() == [ids("<s> describe the image a red circle </s>"),
                                           ids("<s> describe the image blue square </s>") + [pad]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 4 + ids("a red circle </s>"),
                                        [IGNORE_INDEX] * 4 + ids("blue square </s>") + [IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 7 + [0]]
    assert batch["image_mask"].tolist() == [True, False]
    expected = IMAGE_PROCESSOR(images=[red_image()], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(batch["pixel_values"][0], expected)
    assert batch["pixel_values"].dtype == torch.float32 and not batch["pixel_values"][1].any()


def test_caption_collator_pads_on_the_left_when_the_tokenizer_does():
    processor = make_processor()
    processor.tokenizer.padding_side = "left"
    batch = HiveCaptionCollator(processor)([{"image": red_image(), "text": "a red circle"},
                                            {"image": red_image(), "text": "blue"}])
    assert batch["input_ids"].tolist() == [ids("<s> a red circle </s>"), ids("<pad> <pad> <s> blue </s>")]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] + ids("a red circle </s>"),
                                        [IGNORE_INDEX] * 3 + ids("blue </s>")]
    assert batch["attention_mask"].tolist() == [[1] * 5, [0, 0, 1, 1, 1]]


def test_caption_truncation_is_counted():
    report = HiveDataReport()
    collate = HiveCaptionCollator(make_processor(), prompt="describe the image", max_length=6, report=report)
    batch = collate([{"image": red_image(), "text": "a red circle"}, {"image": red_image(), "text": "blue"}])
    assert batch["input_ids"].tolist() == [ids("<s> describe the image a red"), ids("<s> describe the image blue </s>")]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 4 + ids("a red"), [IGNORE_INDEX] * 4 + ids("blue </s>")]
    assert (report.truncated, report.dropped) == (1, 0)
    assert "1 samples truncated" in report.summary()


def test_caption_cut_away_entirely_drops_the_sample():
    report = HiveDataReport()
    collate = HiveCaptionCollator(make_processor(), prompt="describe the image", max_length=4, report=report)
    with pytest.raises(ValueError, match="every sample of this batch was dropped"):
        collate([{"image": red_image(), "text": "a red circle"}])
    assert (report.truncated, report.dropped) == (1, 1)


def test_a_single_label_at_position_zero_is_not_learnable_and_is_dropped():
    report = HiveDataReport()
    collate = HiveCaptionCollator(make_processor(bos=False, eos=None), report=report)
    batch = collate([{"image": None, "text": "red"}, {"image": None, "text": "blue square"}])
    assert batch["input_ids"].tolist() == [ids("blue square")]
    assert batch["labels"].tolist() == [ids("blue square")]
    assert report.dropped == 1


def test_caption_collator_names_bad_examples():
    collate = HiveCaptionCollator(make_processor())
    with pytest.raises(ValueError, match="example 1 has no 'text' field"):
        collate([{"image": None, "text": "red"}, {"image": None, "caption": "red"}])
    with pytest.raises(TypeError, match="example 0: 'image' must be a PIL image or None, got str"):
        collate([{"image": "cat.png", "text": "red"}])
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        HiveCaptionCollator(make_processor(), max_length=1)([{"image": None, "text": "red"}])


def test_missing_pad_token_is_a_clear_error():
    processor = make_processor()
    processor.tokenizer.pad_token = None
    with pytest.raises(ValueError, match="the tokenizer has no pad token"):
        HiveCaptionCollator(processor)([{"image": None, "text": "red"}])


# Stage 3

CONVERSATION = [text_message("user", "what color is it?", with_image=True), text_message("assistant", "red"),
                text_message("user", "and the shape?"), text_message("assistant", "circle")]
CONVERSATION_TOKENS = ("<|user|> what color is it? <|end|> <|assistant|> red <|end|> "
                       "<|user|> and the shape? <|end|> <|assistant|> circle <|end|>")
CONVERSATION_LABELS = [IGNORE_INDEX] * 7 + ids("red <|end|>") + [IGNORE_INDEX] * 6 + ids("circle <|end|>")


@pytest.mark.parametrize("template", [PLAIN_TEMPLATE, GENERATION_TEMPLATE], ids=["incremental", "generation-tags"])
def test_chat_collator_labels_only_assistant_turns(template):
    processor = make_processor(template=template)
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"}]
    batch = HiveChatCollator(processor)([{"image": red_image(), "messages": CONVERSATION},
                                         {"image": None, "messages": short}])
    assert set(batch) == BATCH_KEYS
    pad = VOCAB["<pad>"]
    assert batch["input_ids"].tolist() == [ids(CONVERSATION_TOKENS),
                                           ids("<|user|> hi <|end|> <|assistant|> red <|end|>") + [pad] * 11]
    assert batch["labels"].tolist() == [CONVERSATION_LABELS,
                                        [IGNORE_INDEX] * 4 + ids("red <|end|>") + [IGNORE_INDEX] * 11]
    assert batch["attention_mask"].tolist() == [[1] * 17, [1] * 6 + [0] * 11]
    assert batch["image_mask"].tolist() == [True, False]


def test_system_turns_are_never_labels():
    messages = [{"role": "system", "content": "be brief."}] + CONVERSATION[:2]
    batch = HiveChatCollator(make_processor())([{"image": None, "messages": messages}])
    assert batch["input_ids"].tolist() == [ids("<|system|> be brief. <|end|> <|user|> what color is it? <|end|> "
                                               "<|assistant|> red <|end|>")]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 11 + ids("red <|end|>")]


def test_assistant_spans_are_character_exact():
    text, spans = assistant_spans(make_tokenizer(), [{"role": m["role"], "content": m["content"][-1]["text"]}
                                                     for m in CONVERSATION])
    assert [text[start:end] for start, end in spans] == ["red <|end|> ", "circle <|end|> "]


def test_chat_truncation_is_counted_and_answerless_samples_dropped():
    report = HiveDataReport()
    collate = HiveChatCollator(make_processor(), max_length=10, report=report)
    batch = collate([{"image": None, "messages": CONVERSATION}])
    assert batch["input_ids"].tolist() == [ids(CONVERSATION_TOKENS)[:10]]
    assert batch["labels"].tolist() == [CONVERSATION_LABELS[:10]]
    assert (report.truncated, report.dropped) == (1, 0)

    collate = HiveChatCollator(make_processor(), max_length=7, report=report)
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"}]
    batch = collate([{"image": red_image(), "messages": CONVERSATION}, {"image": None, "messages": short}])
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 4 + ids("red <|end|>")]
    assert batch["image_mask"].tolist() == [False] and not batch["pixel_values"].any()
    assert (report.truncated, report.dropped) == (2, 1)
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_template_that_is_not_incremental_asks_for_generation_tags():
    template = "{{ messages | length }} " + PLAIN_TEMPLATE
    with pytest.raises(ValueError, match=r"\{% generation %\}"):
        HiveChatCollator(make_processor(template=template))([{"image": None, "messages": CONVERSATION}])


def test_chat_collator_names_bad_examples():
    collate = HiveChatCollator(make_processor())
    with pytest.raises(ValueError, match="example 0 has no 'messages' field"):
        collate([{"image": None, "text": "hi"}])
    with pytest.raises(ValueError, match="example 0: no assistant message"):
        collate([{"image": None, "messages": CONVERSATION[:1]}])
    with pytest.raises(ValueError, match="example 0: message 1 must have 'role' and 'content'"):
        collate([{"image": None, "messages": [CONVERSATION[0], {"text": "red"}]}])
    processor = make_processor(template=None)
    with pytest.raises(ValueError, match="neither the processor nor its tokenizer has a chat template"):
        HiveChatCollator(processor)([{"image": None, "messages": CONVERSATION}])


def test_chat_collator_on_hive_shapes_learns_exactly_the_answers():
    from hive_vlm.data.shapes import generate_shapes
    from hive_vlm.data.shapes_layouts import to_conversations

    scenes = generate_shapes(seed=0, num_train=3, num_validation=0, num_test=0, num_test_compositional=0)["train"]
    chats = to_conversations(scenes, prompt_suffix="")
    words = {w for chat in chats for m in chat["messages"] for part in m["content"] if part["text"]
             for w in part["text"].split()}
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.chat_template = PLAIN_TEMPLATE
    processor = SimpleNamespace(image_processor=IMAGE_PROCESSOR, tokenizer=tokenizer)
    batch = HiveChatCollator(processor)(list(chats))
    assert batch["image_mask"].all() and batch["pixel_values"].shape == (3, 3, 32, 32)
    for row, scene in zip(batch["labels"], scenes):
        learned = tokenizer.convert_ids_to_tokens(row[row != IGNORE_INDEX].tolist())
        assert learned == [token for q in scene["questions"] for token in (q["answer"], "<|end|>")]
    assert (tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()).count("<unk>")) == 0


def test_chat_collator_uses_the_hive_processor_template():
    from modeling_hive.processing_hive import HiveProcessor

    tokenizer = make_tokenizer(template=None)
    tokenizer.add_tokens(["user:", "assistant:"])
    processor = HiveProcessor(image_processor=IMAGE_PROCESSOR, tokenizer=tokenizer)
    batch = HiveChatCollator(processor)([{"image": red_image(), "messages": CONVERSATION}])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    learned = tokenizer.convert_ids_to_tokens(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist())
    assert tokens[0] == "<s>" and learned == ["red", "</s>", "circle", "</s>"]
