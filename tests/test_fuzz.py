"""Property tests (hypothesis) on HiveProcessor and the three collators: images of any size and mode, arrays of any
dtype and layout, unicode, empty and very long texts. Each input either works, giving the documented shapes, dtypes
and labels, or raises the documented ValueError/TypeError naming the input. Derandomized: every run tries the same
examples."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import ViTImageProcessorPil

from hive_vlm.data.collators import IGNORE_INDEX, HiveCaptionCollator, HiveChatCollator, HiveMaskedImageCollator
from hive_vlm.data.tokenizer import build_tokenizer
from modeling_hive import HiveProcessor


SIZE = 32
WORDS = "a the red blue green circle square triangle striped dotted left right what colour shape how many".split()
TOKENIZER = build_tokenizer([" ".join(WORDS), "describe the image ."])
PROCESSOR = HiveProcessor(ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}), TOKENIZER)
VOCAB = len(TOKENIZER)
MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "I;16", "I", "1", "F")
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


@st.composite
def images(draw, valid_only=True):
    """(PIL image of a random mode and size (1..300 px a side), whether the processor must accept it)."""
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    valid = True
    if mode in ("I;16", "I"):
        array = rng.integers(0, 65536, size=(height, width)).astype(np.uint16 if mode == "I;16" else np.int32)
        if mode == "I" and not valid_only and draw(st.booleans()):
            array[0, 0], valid = -1, False  # negative 32-bit values have no documented meaning
        image = Image.fromarray(array)
    elif mode == "F":
        scale = draw(st.sampled_from([1.0, 255.0] if valid_only else [1.0, 255.0, 1e4, -1.0]))
        image, valid = Image.fromarray((rng.random((height, width)) * scale).astype(np.float32)), 0 <= scale <= 255
    else:
        channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2, "PA": 2}.get(mode, 1)
        array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        base = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        image = Image.fromarray(array[..., 0] if channels == 1 else array, mode=base)
        if mode == "P" and draw(st.booleans()):
            image = image.convert("RGB").quantize(colors=draw(st.integers(2, 256)))
            if draw(st.booleans()):
                image.info["transparency"] = 0
        elif mode != base:
            image = image.convert(mode)
    return image, valid


@st.composite
def arrays(draw):
    """(numpy array or torch tensor of a random dtype and layout, whether the processor must accept it)."""
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    layout = draw(st.sampled_from(["HW", "HWC", "CHW", "NCHW"]))
    channels = draw(st.sampled_from([1, 2, 3, 4, 5])) if "C" in layout else None
    kind = draw(st.sampled_from(["uint8", "uint16", "bool", "unit_float", "byte_float", "big_float", "negative_int",
                                 "nan", "complex"]))  # fmt: skip
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = {"HW": (height, width), "HWC": (height, width, channels), "CHW": (channels, height, width),
             "NCHW": (2, channels, height, width)}[layout]  # fmt: skip
    values = rng.random(shape)
    array = {
        "uint8": (values * 255).astype(np.uint8),
        "uint16": (values * 65535).astype(np.uint16),
        "bool": values > 0.5,
        "unit_float": values.astype(np.float32),
        "byte_float": (values * 255).astype(np.float64),
        "big_float": (values * 1e4 + 300).astype(np.float32),
        "negative_int": (values * 100 - 200).astype(np.int32),
        "nan": np.where(values > 0.5, np.nan, values).astype(np.float32),
        "complex": values.astype(np.complex64),
    }[kind]
    if kind == "nan" and not np.isnan(array).any():
        array.flat[0] = np.nan
    as_tensor = draw(st.booleans()) and kind not in ("uint16", "complex")
    if as_tensor and layout == "HWC":
        layout, array = "CHW", np.moveaxis(array, -1, 0)  # tensors are read channels-first
    # documented: (H, W), or 3-D with 1, 3 or 4 channels first or last (an ambiguous shape reads channels-first)
    layout_ok = array.ndim == 2 or (array.ndim == 3 and (array.shape[0] in (1, 3, 4) or array.shape[-1] in (1, 3, 4)))
    valid = layout_ok and kind in ("uint8", "uint16", "bool", "unit_float", "byte_float")
    return (torch.from_numpy(np.ascontiguousarray(array)) if as_tensor else array), valid


texts = st.one_of(
    st.text(max_size=40),  # any unicode, the empty string included
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.builds(lambda piece, count: (piece + " ") * count, st.text(min_size=1, max_size=8), st.integers(200, 1500)),
)


def expected_pixels(image) -> torch.Tensor:
    """What inference feeds the model for this image: the processor on its own."""
    return torch.as_tensor(PROCESSOR(images=image, return_tensors="pt")["pixel_values"][0])


@settings(FUZZ, max_examples=300)
@given(image=images(valid_only=False), text=texts)
def test_processor_takes_any_image_and_text(image, text):
    image, valid = image
    try:
        batch = PROCESSOR(images=image, text=text, return_tensors="pt")
    except ValueError as error:
        assert not valid and str(error).startswith("images[0]:"), error
        event(f"{image.mode} refused")
        return
    event(f"{image.mode} accepted")
    assert valid, f"{image.mode} {image.size} was accepted"
    assert batch["pixel_values"].shape == (1, 3, SIZE, SIZE) and batch["pixel_values"].dtype == torch.float32
    assert torch.isfinite(batch["pixel_values"]).all()
    ids = batch["input_ids"]
    assert ids.dtype == torch.long and ids.shape[0] == 1 and ids.shape[1] >= 1 and ids[0, 0] == TOKENIZER.bos_token_id
    assert 0 <= int(ids.min()) and int(ids.max()) < VOCAB and batch["attention_mask"].all()
    assert "image_mask" not in batch


@settings(FUZZ, max_examples=200)
@given(array=arrays())
def test_processor_takes_arrays_and_tensors_or_names_what_is_wrong(array):
    array, valid = array
    try:
        pixel_values = PROCESSOR(images=array, text="a", return_tensors="pt")["pixel_values"]
    except (ValueError, TypeError) as error:
        assert not valid, f"{type(array).__name__} {array.dtype} {tuple(array.shape)} refused: {error}"
        assert str(error).startswith("images[0]:"), error
        event(f"{type(error).__name__}")
        return
    event("accepted")
    assert valid, f"{type(array).__name__} {array.dtype} {tuple(array.shape)} was accepted"
    assert pixel_values.shape == (1, 3, SIZE, SIZE) and torch.isfinite(pixel_values).all()


@settings(FUZZ, max_examples=100)
@given(samples=st.lists(st.tuples(st.one_of(st.none(), images()), texts), min_size=1, max_size=4))
def test_processor_batches_mixed_images_and_texts(samples):
    pictures = [None if image is None else image[0] for image, _ in samples]
    words = [text for _, text in samples]
    if all(picture is None for picture in pictures):
        pictures = None
    batch = PROCESSOR(images=pictures, text=words, padding=True, return_tensors="pt")
    size, length = batch["input_ids"].shape
    assert size == len(samples) and batch["attention_mask"].shape == (size, length)
    for row, text in enumerate(words):  # left padding: each row ends with its own tokens
        own = TOKENIZER(text)["input_ids"]
        assert batch["input_ids"][row, length - len(own):].tolist() == own
        assert batch["attention_mask"][row].tolist() == [0] * (length - len(own)) + [1] * len(own)
    if pictures is None:
        assert "pixel_values" not in batch
        return
    present = [picture is not None for picture in pictures]
    assert batch["pixel_values"].shape == (size, 3, SIZE, SIZE)
    assert batch.get("image_mask", torch.ones(size, dtype=torch.bool)).tolist() == present
    for row, picture in enumerate(pictures):
        expected = expected_pixels(picture) if picture is not None else torch.zeros(3, SIZE, SIZE)
        torch.testing.assert_close(batch["pixel_values"][row], expected)


def assert_padded_batch(batch, kept_images):
    size, length = batch["input_ids"].shape
    assert batch["labels"].shape == batch["attention_mask"].shape == (size, length) and size == len(kept_images)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding never counts
    labelled = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["labels"][labelled], batch["input_ids"][labelled])
    assert labelled[:, 1:].any(dim=1).all()  # every kept row has a label the shifted loss sees
    assert batch["pixel_values"].shape == (size, 3, SIZE, SIZE) and batch["pixel_values"].dtype == torch.float32
    assert batch["image_mask"].tolist() == [image is not None for image in kept_images]
    for row, image in enumerate(kept_images):  # training sees exactly the pixels inference sees
        expected = expected_pixels(image) if image is not None else torch.zeros(3, SIZE, SIZE)
        torch.testing.assert_close(batch["pixel_values"][row], expected)


@settings(FUZZ, max_examples=150)
@given(samples=st.lists(st.tuples(st.one_of(st.none(), images()), texts), min_size=1, max_size=4),
       prompt=st.one_of(st.just(""), texts), max_length=st.one_of(st.none(), st.integers(2, 48)))  # fmt: skip
def test_caption_collator_masks_the_prompt_and_pads(samples, prompt, max_length):
    examples = [{"image": None if image is None else image[0], "text": text} for image, text in samples]
    collate = HiveCaptionCollator(PROCESSOR, prompt=prompt, max_length=max_length)
    prompt_ids = TOKENIZER(prompt)["input_ids"]
    kept = []
    for example in examples:
        ids = prompt_ids + TOKENIZER(example["text"], add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            kept.append((ids, labels, example["image"]))
    if not kept:
        with pytest.raises(ValueError, match="every sample of this batch was dropped"):
            collate(examples)
        return
    batch = collate(examples)
    assert_padded_batch(batch, [image for _, _, image in kept])
    length = batch["input_ids"].shape[1]
    for row, (ids, labels, _) in enumerate(kept):  # the tokenizer pads on the left
        assert batch["input_ids"][row, length - len(ids):].tolist() == ids
        assert batch["labels"][row, length - len(labels):].tolist() == labels
    assert collate.report.dropped == len(examples) - len(kept)


conversations = st.builds(
    lambda system, turns: ([{"role": "system", "content": system}] if system is not None else [])
    + [{"role": role, "content": text} for user, answer in turns for role, text in (("user", user), ("assistant", answer))],
    st.one_of(st.none(), texts),
    st.lists(st.tuples(texts, texts), min_size=1, max_size=3),
)


@settings(FUZZ, max_examples=150)
@given(samples=st.lists(st.tuples(st.one_of(st.none(), images()), conversations), min_size=1, max_size=3))
def test_chat_collator_labels_exactly_the_assistant_tokens(samples):
    examples = [{"image": None if image is None else image[0], "messages": messages} for image, messages in samples]
    batch = HiveChatCollator(PROCESSOR)(examples)
    assert_padded_batch(batch, [example["image"] for example in examples])
    length = batch["input_ids"].shape[1]
    for row, example in enumerate(examples):
        # transformers' own assistant mask (the {% generation %} blocks of the template) is the reference
        reference = PROCESSOR.apply_chat_template(example["messages"], tokenize=True, return_dict=True,
                                                  return_assistant_tokens_mask=True)  # fmt: skip
        ids, mask = reference["input_ids"][0], reference["assistant_masks"][0]
        assert batch["input_ids"][row, length - len(ids):].tolist() == ids
        expected = [token if flag else IGNORE_INDEX for token, flag in zip(ids, mask)]
        assert batch["labels"][row, length - len(ids):].tolist() == expected
        assert expected.count(TOKENIZER.eos_token_id) == sum(m["role"] == "assistant" for m in example["messages"])


@settings(FUZZ, max_examples=100)
@given(pictures=st.lists(st.one_of(st.none(), images()), min_size=1, max_size=4), ratio=st.floats(0.0, 1.0),
       mask_patch_size=st.sampled_from([8, 16, 32]))  # fmt: skip
def test_masked_image_collator_masks_the_exact_ratio(pictures, ratio, mask_patch_size):
    examples = [{"image": None if picture is None else picture[0]} for picture in pictures]
    collate = HiveMaskedImageCollator(PROCESSOR, patch_size=8, mask_ratio=ratio, mask_patch_size=mask_patch_size, seed=0)
    kept = [example["image"] for example in examples if example["image"] is not None]
    if not kept:
        with pytest.raises(ValueError, match="no example of this batch has an image"):
            collate(examples)
        return
    batch = collate(examples)
    assert batch["pixel_values"].shape == (len(kept), 3, SIZE, SIZE)
    for row, image in enumerate(kept):
        torch.testing.assert_close(batch["pixel_values"][row], expected_pixels(image))
    mask = batch["bool_masked_pos"]
    blocks = (SIZE // mask_patch_size) ** 2
    scale = (mask_patch_size // 8) ** 2
    assert mask.shape == (len(kept), (SIZE // 8) ** 2) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [round(ratio * blocks) * scale] * len(kept)
    assert collate.report.dropped == len(examples) - len(kept)
