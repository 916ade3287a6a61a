"""Processor class for HIVE: an image processor, a tokenizer and a chat template."""

import os
import tempfile

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import load_image
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Image blocks render as nothing: HIVE reads the image through cross-attention, never through a text marker.
# Assistant turns sit inside `{% generation %}` so that `return_assistant_tokens_mask=True` marks them (and their
# end-of-sequence token) for a loss on the assistant turns only.
HIVE_CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}"
    "{%- for part in content if part['type'] == 'text' -%}"
    "{{- ' ' if not loop.first else '' -}}{{- part['text'] -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if bos_token is defined and bos_token -%}{{- bos_token -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- message['role'] + ': ' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{{- render_content(message['content']) -}}"
    "{%- if eos_token is defined and eos_token -%}{{- eos_token -}}{%- endif -%}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- render_content(message['content']) -}}"
    "{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant:' -}}{%- endif -%}"
)

MINIMAL_MODEL_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- hive
- custom_code
- visual-question-answering
---

# HIVE

A vision encoder connected to a causal language model through hierarchical gated cross-attention (HIVE).
The code ships with the weights: load it with `trust_remote_code=True`.

```python
from transformers import pipeline

vqa = pipeline("visual-question-answering", model="<this repo>", trust_remote_code=True)
vqa(image="image.png", question="what colour is the circle?")
```
"""

_IMAGE_SOURCE_KEYS = ("image", "url", "path", "base64")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _float_to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: the image holds NaN or infinite values.")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return np.round(array * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.round(array).astype(np.uint8)
    raise ValueError(
        f"{where}: float image values must lie in [0, 1] or [0, 255], got the range [{low:g}, {high:g}]."
    )


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Bring one image array to uint8: floats in [0, 1] or [0, 255], 16-bit integers scaled by 1/257."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array.astype(np.float64), where)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise ValueError(f"{where}: integer image values must not be negative, got a minimum of {low}.")
        if array.dtype == np.uint16 or high > 255:
            return np.round(np.clip(array, 0, 65535) / 257.0).astype(np.uint8)
        return array.astype(np.uint8)
    raise TypeError(f"{where}: unsupported image array dtype {array.dtype}.")


def _array_to_rgb(array: np.ndarray, channels_first: bool, where: str) -> PIL.Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 -> RGB PIL image."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{where}: expected one image of shape (H, W), (H, W, C) or (C, H, W), got shape {tuple(array.shape)}. "
            "Pass a batch as a list of images."
        )
    if array.size == 0:
        raise ValueError(f"{where}: the image is empty (shape {tuple(array.shape)}).")
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if not (first or last):
            raise ValueError(
                f"{where}: cannot find the channel axis of shape {tuple(array.shape)}; it needs 1, 3 or 4 channels."
            )
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    array = np.ascontiguousarray(_to_uint8(array, where))
    if array.ndim == 2:
        return PIL.Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[-1] == 4:
        return _flatten_alpha(PIL.Image.fromarray(array, mode="RGBA"))
    return PIL.Image.fromarray(array, mode="RGB")


def _flatten_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite a transparent image over a white background."""
    image = image.convert("RGBA")
    background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, image).convert("RGB")


def _pil_to_rgb(image: PIL.Image.Image, where: str) -> PIL.Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where}: the image is empty ({image.width}x{image.height}).")
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.int64)
        if array.min() < 0:
            raise ValueError(f"{where}: integer image values must not be negative, got a minimum of {array.min()}.")
        return _array_to_rgb(np.clip(array, 0, 65535).astype(np.uint16), channels_first=False, where=where)
    if image.mode == "F":
        return _array_to_rgb(np.asarray(image), channels_first=False, where=where)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: cannot convert an image of mode {image.mode!r} to RGB ({error}).") from error


def _open_image_file(path: str, where: str) -> PIL.Image.Image:
    if not os.path.isfile(path):
        raise ValueError(f"{where}: image file not found: {path!r}.")
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            return PIL.ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(
            f"{where}: cannot read image file {path!r}; it is corrupt or not an image ({error})."
        ) from error


def load_rgb_image(image, where: str = "image") -> PIL.Image.Image:
    """
    Turn one image into an RGB PIL image.

    Args:
        image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or `os.PathLike`):
            A PIL image of any mode (RGBA, LA and transparent P are composited over white, 16-bit I;16/I are
            scaled by 1/257, CMYK/L/P/1 are converted), an array or tensor of shape (H, W), (H, W, C) or (C, H, W)
            (uint8, uint16, bool, or floats in [0, 1] or [0, 255]), a file path, or an http(s)/data URL.
        where (`str`, *optional*, defaults to `"image"`):
            Name of the input, used in error messages.

    Returns:
        `PIL.Image.Image` in mode RGB.

    Example:
        ```python
        >>> import numpy as np
        >>> load_rgb_image(np.zeros((3, 8, 8), dtype=np.float32)).size
        (8, 8)
        ```
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith(("http://", "https://", "data:image/")):
            try:
                image = load_image(path)
            except Exception as error:
                raise ValueError(f"{where}: cannot load the image at {path[:80]!r} ({error}).") from error
        else:
            image = _open_image_file(path, where)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, where)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return _array_to_rgb(tensor.numpy(), channels_first=True, where=where)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channels_first=False, where=where)
    raise TypeError(
        f"{where}: unsupported image type {type(image).__name__}. Pass a PIL image, a numpy array, a torch tensor "
        "or the path of an image file."
    )


def _is_container(value) -> bool:
    return isinstance(value, (list, tuple))


def vqa_prompt(processor, question: str) -> tuple[str, dict]:
    """The one way HIVE is asked a question about an image: the text to give the processor with the image, and the
    keyword arguments for it. With a chat template, the question is a user turn holding the image, rendered with a
    generation prompt, and the template's special tokens are not added again; without one, the bare question. Used by
    the visual-question-answering pipeline, `hive eval` and the studies, for HIVE and for any processor with a
    chat template.

    Example:
        ```python
        >>> text, kwargs = vqa_prompt(processor, "What color is the square?")
        >>> inputs = processor(images=image, text=text, return_tensors="pt", **kwargs)
        ```
    """
    if getattr(processor, "chat_template", None) is None:
        return question, {}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True), {"add_special_tokens": False}


class HiveProcessor(ProcessorMixin):
    r"""
    Processor for HIVE: wraps the vision encoder's image processor, the LLM's tokenizer and a chat template.

    HIVE has no image token. The image of a sample reaches the model only through `pixel_values`, read by the
    gated cross-attention blocks, and each sample has at most one image. `images` lines up with `text` one to one:
    a single text takes a single image; a list of texts takes a list with one entry per text, each an image,
    `None` (no image) or a list of at most one image. When a batch mixes samples with and without an image, the
    missing ones get an all-zero image and `image_mask` (B,) marks which samples have one.

    The default chat template starts with the tokenizer's bos token, renders each turn as `"role: text\n"` and
    `{"type": "image"}` blocks as nothing, and ends assistant turns with the eos token; `add_generation_prompt`
    appends `"assistant:"`.

    Args:
        image_processor ([`BaseImageProcessor`]):
            The vision encoder's image processor (e.g. `SiglipImageProcessorPil`, `ViTImageProcessorPil`,
            `CLIPImageProcessorPil`). It resizes every image to the encoder's input size.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The LLM's tokenizer. It needs a pad token to batch texts of different lengths.
        chat_template (`str`, *optional*):
            Jinja chat template. Defaults to `HIVE_CHAT_TEMPLATE`.

    Example:
        ```python
        >>> from PIL import Image
        >>> processor = HiveProcessor.from_backbones("google/siglip-base-patch16-224", "Qwen/Qwen2-0.5B")
        >>> batch = processor(images=[Image.new("RGB", (64, 48)), None], text=["a red circle", "hello"],
        ...                   padding=True, return_tensors="pt")
        >>> sorted(batch.keys())
        ['attention_mask', 'image_mask', 'input_ids', 'pixel_values']
        ```
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None):
        if chat_template is None:
            chat_template = HIVE_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_backbones(cls, vision_model, text_model, chat_template=None, pad_token="<pad>", **kwargs):
        r"""
        Build a processor from the backbones' own image processor (PIL backend) and tokenizer.

        When the tokenizer has no pad token, `pad_token` is added as a new special token and a warning says so;
        `processor.num_added_tokens` then counts it and the model needs
        `model.resize_token_embeddings(len(processor.tokenizer))`. Padding goes on the left, as generation needs.

        Args:
            vision_model (`str` or `os.PathLike`):
                Hub id or folder of the vision encoder (holds its image processor config).
            text_model (`str` or `os.PathLike`):
                Hub id or folder of the LLM (holds its tokenizer).
            chat_template (`str`, *optional*):
                Jinja chat template. Defaults to `HIVE_CHAT_TEMPLATE`.
            pad_token (`str`, *optional*, defaults to `"<pad>"`):
                Pad token added when the tokenizer has none.
            kwargs:
                Passed to both `from_pretrained` calls (`revision`, `cache_dir`, `local_files_only`, ...).

        Example:
            ```python
            >>> processor = HiveProcessor.from_backbones("google/siglip-base-patch16-224", "gpt2")
            >>> processor.num_added_tokens  # gpt2 has no pad token
            1
            ```
        """
        image_processor = AutoImageProcessor.from_pretrained(vision_model, backend="pil", **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text_model, **kwargs)
        num_added_tokens = 0
        if tokenizer.pad_token is None:
            num_added_tokens = tokenizer.add_special_tokens({"pad_token": pad_token})
            logger.warning(
                f"The tokenizer of {text_model} has no pad token: added {pad_token!r} (id {tokenizer.pad_token_id}). "
                f"Call `model.resize_token_embeddings(len(processor.tokenizer))` ({len(tokenizer)} tokens) before "
                "training or generating."
            )
        tokenizer.padding_side = "left"
        processor = cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
        processor.num_added_tokens = num_added_tokens
        return processor

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        r"""
        Tokenize `text` and turn `images` into `pixel_values` (B, C, H, W).

        Args:
            images (image, or `list` of image / `None` / `list` of at most one image):
                One image per text (see the class docstring). An image is a PIL image, a numpy array, a torch
                tensor or a file path; every mode and size is converted to the encoder's RGB input.
            text (`str` or `list[str]`):
                The prompts. Pass `padding=True` to batch texts of different lengths.
            kwargs:
                Tokenizer and image-processor arguments (`padding`, `truncation`, `max_length`,
                `return_tensors`, ...).

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` (when `text` is given), `pixel_values` (when at
            least one image is given) and `image_mask` (B,) bool (when only some samples have an image).
        """
        if images is None and text is None:
            raise ValueError("HiveProcessor needs `text`, `images` or both; got neither.")
        texts = self._validate_text(text)
        per_sample_images = self._align_images(images, texts)

        output_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        return_tensors = output_kwargs["text_kwargs"].pop("return_tensors", None)
        output_kwargs["images_kwargs"].pop("return_tensors", None)

        data = {}
        if texts is not None:
            data.update(self.tokenizer(texts, **output_kwargs["text_kwargs"]))
        if per_sample_images is not None and any(image is not None for image in per_sample_images):
            data.update(self._process_sample_images(per_sample_images, output_kwargs["images_kwargs"]))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _validate_text(text) -> list[str] | None:
        if text is None:
            return None
        if isinstance(text, str):
            return [text]
        if _is_container(text) and len(text) > 0 and all(isinstance(sample, str) for sample in text):
            return list(text)
        if _is_container(text) and len(text) == 0:
            raise ValueError("`text` is an empty list; pass at least one string.")
        raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")

    @staticmethod
    def _align_images(images, texts: list[str] | None) -> list | None:
        """One entry (an image or `None`) per sample."""
        if images is None:
            return None
        entries = list(images) if _is_container(images) else [images]
        if texts is not None:
            if not _is_container(images) and len(texts) > 1:
                raise ValueError(
                    f"Got one image for {len(texts)} texts. Pass a list with one image (or None) per text."
                )
            if len(entries) > len(texts):
                raise ValueError(
                    f"Got more images ({len(entries)}) than texts ({len(texts)}). HIVE takes at most one image per "
                    "text: pass a list with one image (or None) per text."
                )
            if len(entries) < len(texts):
                raise ValueError(
                    f"Got {len(entries)} images for {len(texts)} texts. Pass a list with one image (or None) per "
                    "text."
                )
        aligned = []
        for index, entry in enumerate(entries):
            if _is_container(entry):
                if len(entry) > 1:
                    raise ValueError(
                        f"Sample {index} has {len(entry)} images; HIVE takes at most one image per sample."
                    )
                entry = entry[0] if entry else None
            aligned.append(entry)
        return aligned

    def _process_sample_images(self, per_sample_images: list, images_kwargs: dict) -> dict:
        present = [index for index, image in enumerate(per_sample_images) if image is not None]
        rgb_images = [load_rgb_image(per_sample_images[index], where=f"images[{index}]") for index in present]
        processed = self.image_processor(rgb_images, return_tensors="np", **images_kwargs)
        pixel_values = np.asarray(processed["pixel_values"])  # (N, C, H, W) for the N samples with an image
        if len(present) == len(per_sample_images):
            return {"pixel_values": pixel_values}
        batch_pixel_values = np.zeros((len(per_sample_images), *pixel_values.shape[1:]), dtype=pixel_values.dtype)
        batch_pixel_values[present] = pixel_values  # (B, C, H, W), zeros where a sample has no image
        image_mask = np.zeros(len(per_sample_images), dtype=np.bool_)
        image_mask[present] = True
        return {"pixel_values": batch_pixel_values, "image_mask": image_mask}

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        r"""
        Render one conversation (or a batch) with the chat template; with `tokenize=True`, also process the images
        given in `{"type": "image", "image"|"url"|"path"|"base64": ...}` blocks.

        A tokenized conversation whose image block carries no image raises a `ValueError` (pass
        `processor_kwargs={"images": ...}` to supply the images separately). See
        [`~ProcessorMixin.apply_chat_template`] for the other arguments.

        Example:
            ```python
            >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape?"}]}]
            >>> processor.apply_chat_template(messages, add_generation_prompt=True)
            '<bos>user: what shape?\nassistant:'
            ```
        """
        if not _is_container(conversation) or len(conversation) == 0:
            raise TypeError(
                "`conversation` must be a non-empty list of messages (dicts with 'role' and 'content'), or a list "
                f"of such lists; got {type(conversation).__name__}."
            )
        if kwargs.get("tokenize"):
            images_given = (kwargs.get("processor_kwargs") or {}).get("images") is not None
            if not images_given:
                self._check_image_blocks_have_images(conversation)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @staticmethod
    def _check_image_blocks_have_images(conversation):
        batched = _is_container(conversation[0]) or hasattr(conversation[0], "content")
        conversations = conversation if batched else [conversation]
        for conversation_index, messages in enumerate(conversations):
            messages = getattr(messages, "messages", messages)
            for message_index, message in enumerate(messages):
                content = message.get("content") if isinstance(message, dict) else None
                if not _is_container(content):
                    continue
                for block in content:
                    if not isinstance(block, dict) or block.get("type") != "image":
                        continue
                    if not any(block.get(key) is not None for key in _IMAGE_SOURCE_KEYS):
                        where = f"conversation {conversation_index}, " if batched else ""
                        raise ValueError(
                            f"{where}message {message_index} has an image block but no image: put the image in the "
                            "block as {'type': 'image', 'image': <PIL image or path>} (or 'url'/'path'), or pass "
                            "processor_kwargs={'images': ...}."
                        )

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """
        Decode generated token ids (B, T) into a list of strings.

        Args:
            generated_outputs (`torch.Tensor` or `list[list[int]]`):
                Output of `model.generate`.
            skip_special_tokens (`bool`, *optional*, defaults to `True`):
                Drop pad, bos and eos tokens.
        """
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["pixel_values", "image_mask"]

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """
        Save the processor, tokenizer and chat template files, plus a minimal `README.md` model card when the
        folder has none. See [`~ProcessorMixin.save_pretrained`].
        """
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        card_path = os.path.join(save_directory, "README.md")
        if not os.path.exists(card_path):
            handle, temporary_path = tempfile.mkstemp(dir=save_directory, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as card:
                card.write(MINIMAL_MODEL_CARD)
            os.replace(temporary_path, card_path)
        return files


__all__ = ["HiveProcessor", "HIVE_CHAT_TEMPLATE", "load_rgb_image", "vqa_prompt"]
