"""Processor class for HIVE: an image processor, a tokenizer and a chat template."""

import os
import tempfile

import numpy as np
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .card_hive import CARD_NAME, hive_model_card
from .images_hive import IMAGE_SOURCE_KEYS, load_rgb_image


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
                    if not any(block.get(key) is not None for key in IMAGE_SOURCE_KEYS):
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
        Save the processor, tokenizer and chat template files, plus a `README.md` model card when the folder has none
        (see `model_card`). See [`~ProcessorMixin.save_pretrained`].
        """
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        card_path = os.path.join(save_directory, CARD_NAME)
        if not os.path.exists(card_path):
            handle, temporary_path = tempfile.mkstemp(dir=save_directory, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as card:
                card.write(str(self.model_card()))
            os.replace(temporary_path, card_path)
        return files

    def model_card(self, name: str = "HIVE"):
        """The HIVE model card (`card_hive.hive_model_card`) with what a processor knows: its image processor and its
        tokenizer. Titled `name`: not the folder's name, which is often a temporary one (a folder written aside, then
        renamed). `hive card --model <folder>` replaces it with the model's own card."""
        details = (
            "## Processor\n\n"
            f"Images go through `{type(self.image_processor).__name__}`, text through `{type(self.tokenizer).__name__}` "
            f"({len(self.tokenizer)} tokens). This card was written with the processor; `hive card --model <folder>` "
            "writes the model's own: backbones, cross-attention layers, training and evaluation.\n\n"
        )
        return hive_model_card(name, details=details)


__all__ = ["HiveProcessor", "HIVE_CHAT_TEMPLATE", "load_rgb_image", "vqa_prompt"]
