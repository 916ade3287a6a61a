"""HiveProcessor and the offline tokenizer: image alignment, image types and modes, chat template, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    ViTImageProcessorPil,
)
from transformers.testing_utils import CaptureLogger

from hive_vlm.data.tokenizer import build_tokenizer
from modeling_hive import processing_hive
from modeling_hive.processing_hive import HIVE_CHAT_TEMPLATE, HiveProcessor, load_rgb_image


CORPUS = [
    "a small red circle with stripes .",
    "what colour is the circle ?",
    "how many shapes are there ? 3",
    "is the square left of the triangle ? yes",
]
IMAGE_SIZE = 16


def image_processor_for(family: str):
    if family == "siglip":
        return SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if family == "vit":
        return ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return HiveProcessor(image_processor_for("siglip"), tokenizer)


@pytest.fixture(scope="module")
def picture():
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # (H, W, C)


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_tokenizer_special_tokens_and_round_trip(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    ids = tokenizer("What colour is the CIRCLE?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "what colour is the circle ?"
    assert tokenizer("a zebra")["input_ids"][-1] == tokenizer.unk_token_id
    assert tokenizer.convert_ids_to_tokens(tokenizer("3 shapes")["input_ids"][1]) == "3"
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template == HIVE_CHAT_TEMPLATE


def test_tokenizer_is_deterministic_and_respects_limits():
    assert build_tokenizer(CORPUS).get_vocab() == build_tokenizer(list(CORPUS)).get_vocab()
    capped = build_tokenizer(CORPUS, vocab_size=12)
    assert len(capped) == 12
    assert capped.convert_tokens_to_ids(["user", "assistant", ":"]) == [4, 5, 7]
    frequent = build_tokenizer(CORPUS, min_frequency=2)
    assert "the" in frequent.get_vocab() and "stripes" not in frequent.get_vocab()


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "is the square left of the triangle ?"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template and reloaded.padding_side == "left"


@pytest.mark.parametrize(
    "corpus, kwargs, error",
    [("one string", {}, TypeError), (["ok", 3], {}, TypeError), (["", " "], {}, ValueError), (CORPUS, {"vocab_size": 5}, ValueError)],
)
def test_tokenizer_rejects_bad_corpus(corpus, kwargs, error):
    with pytest.raises(error):
        build_tokenizer(corpus, **kwargs)


# --- processor call --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["siglip", "vit", "clip"])
def test_call_with_each_encoder_image_processor(family, tokenizer, picture):
    image_processor = image_processor_for(family)
    processor = HiveProcessor(image_processor, tokenizer)
    image = Image.fromarray(picture)
    batch = processor(images=image, text="what colour is the circle ?", return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(batch["pixel_values"], image_processor(image, return_tensors="pt")["pixel_values"])
    assert batch["input_ids"].tolist() == [tokenizer("what colour is the circle ?")["input_ids"]]


def test_mixed_batch_gets_zero_images_and_image_mask(processor, picture):
    image = Image.fromarray(picture)
    batch = processor(images=[None, image, [], [image]], text=["a", "b c", "what", "d"], padding=True, return_tensors="pt")
    assert batch["image_mask"].tolist() == [False, True, False, True]
    assert batch["image_mask"].dtype == torch.bool
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.count_nonzero(batch["pixel_values"][[0, 2]]) == 0
    single = processor(images=image, text="b", return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(batch["pixel_values"][1], single)
    torch.testing.assert_close(batch["pixel_values"][3], single)
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"][0, 0] == 0  # left padding


def test_text_only_and_image_only(processor, picture):
    text_only = processor(images=[None, None], text=["a", "b"], return_tensors="pt")
    assert set(text_only) == {"input_ids", "attention_mask"}
    image_only = processor(images=[Image.fromarray(picture)] * 2, return_tensors="pt")
    assert set(image_only) == {"pixel_values"} and image_only["pixel_values"].shape[0] == 2


def test_every_image_type_gives_the_same_pixels(processor, picture, tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray(picture).save(path)
    reference = processor(images=Image.fromarray(picture), text="a", return_tensors="pt")["pixel_values"]
    variants = {
        "path": str(path),
        "pathlike": path,
        "numpy_hwc": picture,
        "numpy_chw": np.moveaxis(picture, -1, 0).copy(),
        "numpy_float01": picture.astype(np.float32) / 255.0,
        "numpy_float255": picture.astype(np.float64),
        "torch_chw_uint8": torch.from_numpy(picture).permute(2, 0, 1),
        "torch_chw_float": torch.from_numpy(picture).permute(2, 0, 1).float() / 255.0,
        "numpy_uint16": picture.astype(np.uint16) * 257,
    }
    for name, image in variants.items():
        pixel_values = processor(images=image, text="a", return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, reference, msg=f"{name} differs from the PIL image")


@pytest.mark.parametrize(
    "make_image, expected",
    [
        (lambda: Image.new("RGBA", (2, 2), (10, 20, 30, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (2, 2), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: Image.new("LA", (2, 2), (40, 255)), (40, 40, 40)),
        (lambda: Image.new("L", (2, 2), 100), (100, 100, 100)),
        (lambda: Image.new("RGB", (2, 2), (1, 2, 3)).convert("P", palette=Image.Palette.ADAPTIVE), (1, 2, 3)),
        (lambda: Image.new("CMYK", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("I;16", (2, 2), 65535), (255, 255, 255)),
        (lambda: Image.new("I;16", (2, 2), 257 * 100), (100, 100, 100)),
        (lambda: Image.new("I", (2, 2), 257 * 7), (7, 7, 7)),
        (lambda: Image.new("F", (2, 2), 0.5), (128, 128, 128)),
        (lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
    ],
    ids=["rgba-transparent", "rgba-opaque", "la", "l", "p", "cmyk", "i16-max", "i16-mid", "i", "f", "1"],
)
def test_modes_convert_to_rgb(make_image, expected):
    image = load_rgb_image(make_image())
    assert image.mode == "RGB" and image.getpixel((0, 0)) == expected


def test_sixteen_bit_png_file_is_scaled(tmp_path, processor):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.uint16)).save(path)
    assert load_rgb_image(path).getpixel((1, 1)) == (200, 200, 200)
    assert processor(images=str(path), text="a", return_tensors="pt")["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("size", [(1, 1), (500, 3), (3, 400), (64, 48)])
def test_any_size_is_resized(processor, size):
    batch = processor(images=Image.new("RGB", size, (9, 9, 9)), text="a", return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem(processor, picture, tmp_path):
    image = Image.fromarray(picture)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(picture).resize((64, 64)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    cases = [
        (dict(images=[image, image], text="a"), ValueError, "more images \\(2\\) than texts \\(1\\)"),
        (dict(images=[image, image, image], text=["a", "b"]), ValueError, "more images"),
        (dict(images=[image], text=["a", "b"]), ValueError, "1 images for 2 texts"),
        (dict(images=image, text=["a", "b"]), ValueError, "one image for 2 texts"),
        (dict(images=[[image, image]], text=["a"]), ValueError, "Sample 0 has 2 images"),
        (dict(images=12, text="a"), TypeError, "unsupported image type int"),
        (dict(images={"image": image}, text="a"), TypeError, "unsupported image type dict"),
        (dict(images=str(tmp_path / "missing.png"), text="a"), ValueError, "not found"),
        (dict(images=str(corrupt), text="a"), ValueError, "corrupt"),
        (dict(images=str(truncated), text="a"), ValueError, "corrupt"),
        (dict(images=np.zeros((2, 4, 4, 3)), text="a"), ValueError, "list of images"),
        (dict(images=np.zeros((0, 4, 3)), text="a"), ValueError, "empty"),
        (dict(images=np.zeros((5, 6, 7)), text="a"), ValueError, "channel"),
        (dict(images=np.full((4, 4), np.nan), text="a"), ValueError, "NaN"),
        (dict(images=np.full((4, 4), -2.0), text="a"), ValueError, "range"),
        (dict(images=np.full((4, 4), -1, dtype=np.int32), text="a"), ValueError, "negative"),
        (dict(images=image, text=3), TypeError, "`text` must be a string"),
        (dict(images=image, text=[]), ValueError, "empty list"),
        (dict(), ValueError, "got neither"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            processor(**kwargs)


# --- chat template ---------------------------------------------------------------------------------------------


def conversation(image=None, answer=None):
    image_block = {"type": "image"} if image is None else {"type": "image", "image": image}
    messages = [{"role": "user", "content": [image_block, {"type": "text", "text": "what colour is the circle ?"}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def test_chat_template_renders_image_blocks_as_nothing(processor):
    rendered = processor.apply_chat_template(conversation(answer="red"))
    assert rendered == "<bos>user: what colour is the circle ?\nassistant: red<eos>\n"
    prompt = processor.apply_chat_template(conversation(), add_generation_prompt=True)
    assert prompt == "<bos>user: what colour is the circle ?\nassistant:"


def test_tokenized_chat_matches_processor_call(processor, picture):
    image = Image.fromarray(picture)
    chat = processor.apply_chat_template(
        conversation(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = processor.apply_chat_template(conversation(), add_generation_prompt=True)
    direct = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    assert chat["input_ids"].tolist() == direct["input_ids"].tolist()
    assert chat["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1
    torch.testing.assert_close(chat["pixel_values"], direct["pixel_values"])


def test_batched_chat_mixes_image_and_text_only(processor, picture):
    text_only = [{"role": "user", "content": "hello"}]
    batch = processor.apply_chat_template(
        [conversation(Image.fromarray(picture)), text_only],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert batch["image_mask"].tolist() == [True, False]
    assert torch.count_nonzero(batch["pixel_values"][1]) == 0


def test_assistant_mask_covers_answer_and_eos(processor, picture):
    batch = processor.apply_chat_template(
        conversation(Image.fromarray(picture), answer="red"), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = batch["input_ids"][0]
    masked = [token for token, keep in zip(ids, batch["assistant_masks"][0]) if keep]
    assert processor.tokenizer.convert_ids_to_tokens(masked) == ["red", "<eos>"]


def test_chat_image_block_without_image_is_an_error(processor, picture):
    with pytest.raises(ValueError, match="message 0 has an image block but no image"):
        processor.apply_chat_template(conversation(), add_generation_prompt=True, tokenize=True)
    with pytest.raises(ValueError, match="conversation 1, message 0"):
        processor.apply_chat_template([conversation(Image.fromarray(picture)), conversation()], tokenize=True)
    batch = processor.apply_chat_template(
        conversation(), tokenize=True, return_dict=True, processor_kwargs={"images": [Image.fromarray(picture)]}
    )
    assert "pixel_values" in batch
    with pytest.raises(TypeError, match="conversation"):
        processor.apply_chat_template("user: hi")


# --- from_backbones and saving ---------------------------------------------------------------------------------


def save_tokenizer_without_pad(folder):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(folder)


def test_from_backbones_adds_a_pad_token_and_says_so(tmp_path):
    vision, text = tmp_path / "vision", tmp_path / "text"
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(vision)
    save_tokenizer_without_pad(text)
    with CaptureLogger(processing_hive.logger) as captured:
        processor = HiveProcessor.from_backbones(str(vision), str(text), local_files_only=True)
    assert "has no pad token" in captured.out and "resize_token_embeddings" in captured.out
    assert processor.num_added_tokens == 1
    assert processor.tokenizer.pad_token == "<pad>" and processor.tokenizer.pad_token_id == 5
    assert len(processor.tokenizer) == 6
    assert processor.tokenizer.padding_side == "left"
    assert isinstance(processor.image_processor, SiglipImageProcessorPil)
    assert processor.chat_template == HIVE_CHAT_TEMPLATE
    batch = processor(images=[Image.new("RGB", (9, 9)), None], text=["hello world", "hello"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, 0] == 5


def test_from_backbones_keeps_an_existing_pad_token(tmp_path, tokenizer):
    vision, text = tmp_path / "vision", tmp_path / "text"
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(vision)
    tokenizer.save_pretrained(text)
    with CaptureLogger(processing_hive.logger) as captured:
        processor = HiveProcessor.from_backbones(str(vision), str(text), local_files_only=True)
    assert processor.num_added_tokens == 0 and captured.out == ""
    assert len(processor.tokenizer) == len(tokenizer)


def test_save_and_reload_reproduces_outputs(processor, picture, tmp_path):
    processor.save_pretrained(tmp_path)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        assert (tmp_path / name).is_file(), name
    reloaded = HiveProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(picture)
    expected = processor(images=[image, None], text=["a red", "what colour is it"], padding=True, return_tensors="pt")
    actual = reloaded(images=[image, None], text=["a red", "what colour is it"], padding=True, return_tensors="pt")
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])
    assert reloaded.chat_template == processor.chat_template


def test_save_keeps_an_existing_model_card(processor, tmp_path):
    (tmp_path / "README.md").write_text("# my card\n")
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my card\n"
    assert not list(tmp_path.glob("*.tmp"))
