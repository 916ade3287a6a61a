"""One collator per training stage. Each is a dataclass called with a list of examples, returning torch tensors.

    stage 1  `HiveMaskedImageCollator`  {"image"}             -> pixel_values, bool_masked_pos
    stage 2  `HiveCaptionCollator`      {"image", "text"}     -> input_ids, attention_mask, labels, pixel_values,
                                                                 image_mask
    stage 3  `HiveChatCollator`         {"image", "messages"} -> the same keys as stage 2

`processor` is anything with `.image_processor` (called as `image_processor(images=[PIL...],
return_tensors="pt")`) and `.tokenizer` (a fast tokenizer with a pad token), such as `HiveProcessor`.
Text is padded to the longest item of the batch, on the tokenizer's `padding_side`. Labels are -100 where no
loss is taken. Text longer than `max_length` is cut and counted in `report`; a sample left without a single
label the model can learn from (labels are shifted by one inside the model, so position 0 never counts) is
dropped and counted, so no batch ever has all its labels masked. A sample whose image is None gets
`image_mask=False` and an all-zero image. HIVE puts no image token in the text: images reach the LLM through
`pixel_values` and cross-attention only.
"""

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.utils.chat_template_utils import render_jinja_template

from modeling_hive.images_hive import load_rgb_image

from .report import HiveDataReport
from .schema import message_text

IGNORE_INDEX = -100
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _as_rgb(image, index: int):
    """RGB exactly as HiveProcessor converts at inference (alpha over white, 16-bit and float images scaled)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"example {index}: 'image' must be a PIL image or None, got {type(image).__name__}.")
    return load_rgb_image(image, where=f"example {index}: 'image'")


def _check_batch(examples) -> None:
    if not isinstance(examples, (list, tuple)):
        raise TypeError(f"a collator takes a list of examples (dicts), got {type(examples).__name__}.")
    if not examples:
        raise ValueError("the batch is empty: a collator needs at least one example.")


def _pixel_values(image_processor, images: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values (B, C, H, W), image_mask (B,)) with zeros where an image is None."""
    present = [i for i, image in enumerate(images) if image is not None]
    if present:
        values = image_processor(images=[_as_rgb(images[i], i) for i in present], return_tensors="pt")["pixel_values"]
    else:
        values = image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"]
    pixel_values = values.new_zeros((len(images), *values.shape[1:]))
    image_mask = torch.zeros(len(images), dtype=torch.bool)
    if present:
        pixel_values[present] = values
        image_mask[present] = True
    return pixel_values, image_mask


def _max_length(tokenizer, max_length: int | None) -> int | None:
    if max_length is not None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a label needs a token before it), got {max_length}.")
        return max_length
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


def _pad(tokenizer, sequences: list, labels: list) -> dict:
    """Pad token ids and labels to the longest sequence, on the tokenizer's padding side."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one, e.g. tokenizer.pad_token = tokenizer.eos_token.")
    longest = max(len(ids) for ids in sequences)
    fill = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch = {name: torch.full((len(sequences), longest), value, dtype=torch.long) for name, value in fill.items()}
    for row, (ids, row_labels) in enumerate(zip(sequences, labels)):
        span = slice(longest - len(ids), longest) if tokenizer.padding_side == "left" else slice(0, len(ids))
        batch["input_ids"][row, span] = torch.tensor(ids, dtype=torch.long)
        batch["attention_mask"][row, span] = 1
        batch["labels"][row, span] = torch.tensor(row_labels, dtype=torch.long)
    return batch


def _fit(ids: list, labels: list, max_length: int | None, report: HiveDataReport, name: str):
    """Cut to `max_length`; (ids, labels), or None when no learnable label is left (the sample is dropped)."""
    if max_length is not None and len(ids) > max_length:
        report.truncate(f"{name}: {len(ids)} tokens cut to {max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        report.drop(f"{name}: no answer token left within max_length={max_length} ({len(ids)} tokens)")
        return None
    return ids, labels


def _require(example: dict, key: str, index: int):
    if not isinstance(example, dict) or key not in example:
        found = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise ValueError(f"example {index} has no {key!r} field; found {found}.")
    return example[key]


def _finish(tokenizer, processor, kept: list, what: str) -> dict:
    if not kept:
        raise ValueError(f"every sample of this batch was dropped: no {what} fits within max_length. "
                         f"Raise max_length or shorten the prompts.")
    batch = _pad(tokenizer, [ids for ids, _, _ in kept], [labels for _, labels, _ in kept])
    batch["pixel_values"], batch["image_mask"] = _pixel_values(processor.image_processor, [image for *_, image in kept])
    return batch


@dataclass
class HiveMaskedImageCollator:
    """Stage 1: images for masked image modelling, with a SimMIM-style random patch mask.

    The image is split into blocks of `mask_patch_size` pixels; exactly `round(mask_ratio * blocks)` blocks of
    each image are masked, chosen uniformly, and the mask is expanded to the encoder's patch grid. Examples
    without an image are dropped and counted.

    Args:
        processor: object with `.image_processor`.
        patch_size: the vision encoder's patch size.
        mask_ratio: share of blocks masked, in [0, 1].
        mask_patch_size: side of a masked block in pixels (a multiple of `patch_size`); `patch_size` when None.
        seed: seeds the collator's own generator; the global torch generator is used when None.
        report: where dropped samples are counted.

    Returns:
        `pixel_values` (B, C, H, W) and `bool_masked_pos` (B, (H / patch_size) * (W / patch_size)), True where
        a patch is masked, in row-major patch order (what `ViTModel(bool_masked_pos=...)` takes).

    Example:
        >>> from types import SimpleNamespace
        >>> from PIL import Image
        >>> from transformers import ViTImageProcessorPil
        >>> from hive_vlm.data.collators import HiveMaskedImageCollator
        >>> processor = SimpleNamespace(image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}))
        >>> collate = HiveMaskedImageCollator(processor, patch_size=8, mask_ratio=0.5, seed=0)
        >>> batch = collate([{"image": Image.new("RGB", (40, 40))}] * 2)
        >>> batch["bool_masked_pos"].shape, int(batch["bool_masked_pos"][0].sum())
        (torch.Size([2, 16]), 8)
    """

    processor: Any
    patch_size: int = 16
    mask_ratio: float = 0.6
    mask_patch_size: int | None = None
    seed: int | None = None
    report: HiveDataReport = field(default_factory=HiveDataReport)

    def __post_init__(self):
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1], got {self.mask_ratio}.")
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive int (the encoder's patch size), got {self.patch_size!r}.")
        self.mask_patch_size = self.mask_patch_size or self.patch_size
        if self.mask_patch_size % self.patch_size:
            raise ValueError(f"mask_patch_size ({self.mask_patch_size}) must be a multiple of patch_size "
                             f"({self.patch_size}).")
        self._generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def __call__(self, examples: list) -> dict:
        _check_batch(examples)
        images = []
        for index, example in enumerate(examples):
            image = _require(example, "image", index)
            if image is None:
                self.report.drop(f"example {index}: no image for masked image modelling")
            else:
                images.append(_as_rgb(image, index))
        if not images:
            raise ValueError("no example of this batch has an image; stage 1 needs images.")
        pixel_values = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        height, width = pixel_values.shape[-2:]
        if height % self.mask_patch_size or width % self.mask_patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of mask_patch_size "
                             f"{self.mask_patch_size}.")
        return {"pixel_values": pixel_values, "bool_masked_pos": self.mask(len(images), height, width)}

    def mask(self, batch_size: int, height: int, width: int) -> torch.Tensor:
        """(batch_size, num_patches) bool mask; adapted from SimMIM's MaskGenerator (exact count per image)."""
        rows, columns = height // self.mask_patch_size, width // self.mask_patch_size
        num_masked = round(self.mask_ratio * rows * columns)
        order = torch.rand(batch_size, rows * columns, generator=self._generator).argsort(dim=1)
        blocks = torch.zeros(batch_size, rows * columns, dtype=torch.bool)
        blocks.scatter_(1, order[:, :num_masked], True)
        scale = self.mask_patch_size // self.patch_size
        blocks = blocks.view(batch_size, rows, columns)
        patches = blocks.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # (B, H/p, W/p)
        return patches.reshape(batch_size, -1)


@dataclass
class HiveCaptionCollator:
    """Stage 2: caption language modelling. Loss on the caption (and the EOS after it), never on the prompt.

    Each sample is `tokenizer(prompt)` (with the tokenizer's special tokens, e.g. BOS) followed by
    `tokenizer(text, add_special_tokens=False)` and EOS, so training sees the prompt tokenised as at generation.

    Args:
        processor: object with `.image_processor` and `.tokenizer`.
        prompt: text before every caption (masked out of the loss); may be empty.
        max_length: longest sequence in tokens; the tokenizer's `model_max_length` when None (if finite).
        report: where truncated and dropped samples are counted.

    Example:
        >>> from hive_vlm.data.collators import HiveCaptionCollator
        >>> collate = HiveCaptionCollator(processor, prompt="Describe the image.", max_length=64)  # doctest: +SKIP
        >>> batch = collate([{"image": image, "text": "A large red circle."}])  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['attention_mask', 'image_mask', 'input_ids', 'labels', 'pixel_values']
    """

    processor: Any
    prompt: str = ""
    max_length: int | None = None
    report: HiveDataReport = field(default_factory=HiveDataReport)

    def __call__(self, examples: list) -> dict:
        _check_batch(examples)
        tokenizer = self.processor.tokenizer
        max_length = _max_length(tokenizer, self.max_length)
        prompt_ids = tokenizer(self.prompt, add_special_tokens=True)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        kept = []
        for index, example in enumerate(examples):
            text = _require(example, "text", index)
            if not isinstance(text, str):
                raise TypeError(f"example {index}: 'text' must be a string, got {type(text).__name__}.")
            caption_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            ids = prompt_ids + caption_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + caption_ids
            fitted = _fit(ids, labels, max_length, self.report, f"example {index}")
            if fitted is not None:
                kept.append((*fitted, example.get("image")))
        return _finish(tokenizer, self.processor, kept, "caption")


def assistant_spans(tokenizer, messages: list, chat_template: str | None = None) -> tuple[str, list]:
    """The conversation rendered by the chat template, and the character spans (start, end) of assistant turns.

    With a template that marks assistant text with `{% generation %}` ... `{% endgeneration %}`, the spans are
    those marks. Otherwise every assistant turn is located by rendering the conversation up to it: it spans
    from the end of the preceding messages plus the generation prompt to the end of the turn, end-of-turn
    tokens included. That needs a template whose render of the first messages is a prefix of the render of
    all of them; a ValueError says so when it is not.

    Example:
        >>> from hive_vlm.data.collators import assistant_spans
        >>> text, spans = assistant_spans(tokenizer, [{"role": "user", "content": "hi"},
        ...                                           {"role": "assistant", "content": "hello"}])  # doctest: +SKIP
        >>> [text[a:b] for a, b in spans]  # doctest: +SKIP
        ['hello<|im_end|>\\n']
    """
    template = tokenizer.get_chat_template(chat_template)
    if _GENERATION_TAG.search(template):
        rendered, indices = render_jinja_template(conversations=[messages], chat_template=template,
                                                  return_assistant_tokens_mask=True, **tokenizer.special_tokens_map)
        return rendered[0], [tuple(span) for span in indices[0]]
    full = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = (tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True,
                                                chat_template=template) if i else "")
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, chat_template=template)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                "the chat template does not render conversations incrementally (rendering the first messages "
                "does not give a prefix of the whole), so assistant turns cannot be located. Wrap the assistant "
                "text of the template in {% generation %} ... {% endgeneration %}."
            )
        spans.append((len(before), len(through)))
    return full, spans


@dataclass
class HiveChatCollator:
    """Stage 3: multi-turn conversations through the tokenizer's chat template, loss on assistant turns only.

    Message contents may be strings or lists of parts (`{"type": "text", "text": ...}`, `{"type": "image"}`);
    the text parts are joined and image parts dropped before the template runs, because HIVE has no image token.
    Assistant turns are located with `assistant_spans`; every token overlapping one is a label.

    Args:
        processor: object with `.image_processor` and `.tokenizer`. The processor's `chat_template` is used
            when it has one (the template generation uses), the tokenizer's otherwise.
        max_length: longest sequence in tokens; the tokenizer's `model_max_length` when None (if finite).
        report: where truncated and dropped samples are counted.

    Example:
        >>> from hive_vlm.data.collators import HiveChatCollator
        >>> collate = HiveChatCollator(processor, max_length=512)  # doctest: +SKIP
        >>> batch = collate([{"image": image, "messages": [{"role": "user", "content": "What color is it?"},
        ...                                                {"role": "assistant", "content": "red"}]}])  # doctest: +SKIP
    """

    processor: Any
    max_length: int | None = None
    report: HiveDataReport = field(default_factory=HiveDataReport)

    def __call__(self, examples: list) -> dict:
        _check_batch(examples)
        tokenizer = self.processor.tokenizer
        max_length = _max_length(tokenizer, self.max_length)
        template = getattr(self.processor, "chat_template", None) or tokenizer.chat_template
        if not template:
            raise ValueError("neither the processor nor its tokenizer has a chat template; set "
                             "tokenizer.chat_template (or the processor's chat_template).")
        kept = []
        for index, example in enumerate(examples):
            messages = _require(example, "messages", index)
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"example {index}: 'messages' must be a non-empty list of chat messages.")
            plain = []
            for j, message in enumerate(messages):
                if not isinstance(message, dict) or "role" not in message or "content" not in message:
                    raise ValueError(f"example {index}: message {j} must have 'role' and 'content', got {message!r}.")
                if not isinstance(message["content"], (str, list)):
                    raise TypeError(f"example {index}: message {j} 'content' must be a string or a list of parts, "
                                    f"got {type(message['content']).__name__}.")
                plain.append({"role": message["role"], "content": message_text(message)})
            if not any(message["role"] == "assistant" for message in plain):
                raise ValueError(f"example {index}: no assistant message, so nothing to learn from.")
            text, spans = assistant_spans(tokenizer, plain, template)
            encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = encoding["input_ids"]
            labels = [
                token if any(start < end_span and end > start_span for start_span, end_span in spans) else IGNORE_INDEX
                for token, (start, end) in zip(ids, encoding["offset_mapping"])
            ]
            fitted = _fit(ids, labels, max_length, self.report, f"example {index}")
            if fitted is not None:
                kept.append((*fitted, example.get("image")))
        return _finish(tokenizer, self.processor, kept, "assistant answer")
