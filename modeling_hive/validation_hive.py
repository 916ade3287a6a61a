"""HIVE's input checks: one helper per forward, run before any computation, and out of the compiled path.

Two kinds of check. Shape and dtype checks read only a tensor's metadata: they run in every forward, and under
`torch.compile` they cost nothing (they become the graph's guards). Value checks (token ids inside the vocabulary,
finite pixels, a 0/1 image mask, label ids) read the tensors' contents, so they wait for the device: they run in eager
forwards only. Inside a compiled graph (`torch.compiler.is_compiling()`) they are skipped, never a graph break or a
host-device synchronisation per step. `HiveForConditionalGeneration.generate` runs them once on its inputs before it
starts (`check_input_values`), so each input is checked even where generate compiles its prefill (chunked prefill); a
forward compiled by hand runs without them.
"""

import torch


def value_checks_enabled() -> bool:
    """False while `torch.compile` traces: value checks would synchronise with the device and break the graph."""
    return not torch.compiler.is_compiling()


def check_hive_inputs(config, vocab_size, input_ids, inputs_embeds, attention_mask, pixel_values, image_mask, has_cache,
                      output_cross_attentions=False):  # fmt: skip
    """Refuses malformed `HiveModel.forward` inputs with an error naming the fix; returns the image mask as a `(B,)`
    bool tensor, or None when every sample has an image (then the blocks skip the masking; in a compiled graph the mask
    stays a tensor, which gives the same result without reading it)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if output_cross_attentions and config.cross_attention_mode == "shared_softmax":
        raise ValueError(
            "output_cross_attentions needs the gated cross-attention blocks; in shared_softmax mode the image keys are "
            "part of the LLM's own attention, whose weights sdpa does not return."
        )
    if input_ids is not None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence_length), got {tuple(input_ids.shape)}.")
        if torch.is_floating_point(input_ids) or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one token per sample.")
        # Skipped on single-token decode steps too: the ids are the model's own.
        if value_checks_enabled() and (not has_cache or input_ids.shape[1] > 1):
            check_input_values(input_ids=input_ids, vocab_size=vocab_size)
    text_width = config.text_config.hidden_size
    if inputs_embeds is not None and (inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != text_width):
        raise ValueError(f"inputs_embeds must have shape (batch, sequence_length, {text_width}), got {tuple(inputs_embeds.shape)}.")
    text = input_ids if input_ids is not None else inputs_embeds
    batch_size, seq_len = text.shape[0], text.shape[1]
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
        if attention_mask.shape[0] != batch_size:
            raise ValueError(f"attention_mask has batch size {attention_mask.shape[0]} but input has {batch_size}.")
        if attention_mask.shape[1] < seq_len or (not has_cache and attention_mask.shape[1] != seq_len):
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions but the input has {seq_len} tokens; pass "
                "the mask the tokenizer returned with these input_ids."
            )
    if pixel_values is None:
        return image_mask
    check_pixel_values(config, pixel_values, batch_size)
    return check_image_mask(image_mask, batch_size, text.device)


def check_input_values(input_ids=None, pixel_values=None, image_mask=None, vocab_size: int | None = None) -> None:
    """The value checks alone, on whichever of these inputs are given (`vocab_size` with `input_ids`); eager:
    `generate` runs them before it starts."""
    if vocab_size is not None and isinstance(input_ids, torch.Tensor) and input_ids.numel() and not torch.is_floating_point(input_ids):
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids holds ids outside the vocabulary [0, {vocab_size}): min {low}, max {high}. Use the "
                "model's own tokenizer, or resize_token_embeddings after adding tokens."
            )
    if isinstance(pixel_values, torch.Tensor) and torch.is_floating_point(pixel_values) and not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contains NaN or inf; check the image preprocessing.")
    if image_mask is not None:
        image_mask = torch.as_tensor(image_mask)
        if image_mask.dtype != torch.bool and not ((image_mask == 0) | (image_mask == 1)).all():
            raise ValueError(f"image_mask must hold True/False (or 1/0) per sample, got {image_mask.tolist()}.")


def check_pixel_values(config, pixel_values, batch_size: int) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor of shape (B, C, H, W), got {type(pixel_values).__name__}.")
    if not torch.is_floating_point(pixel_values):
        raise TypeError(
            f"pixel_values must be floating point, normalised as the processor does, got dtype {pixel_values.dtype}. "
            "Run images through the processor (HiveProcessor) to get pixel_values."
        )
    channels = getattr(config.vision_config, "num_channels", 3)
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
        raise ValueError(
            f"pixel_values must have shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}. "
            "Run images through the processor (HiveProcessor) to get pixel_values."
        )
    if pixel_values.shape[0] != batch_size:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[0]} images but the text batch has {batch_size} samples; pass one "
            "image per sample (a zero image with image_mask False for samples without one)."
        )
    if config.cross_attention_mode == "shared_softmax" and pixel_values.shape[-2] != pixel_values.shape[-1]:
        raise ValueError(
            f"shared_softmax gives image keys the rows and columns of a square patch grid, and these images are "
            f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]}; resize them to a square (the processor does)."
        )
    if value_checks_enabled():
        check_input_values(pixel_values=pixel_values)


def check_image_mask(image_mask, batch_size: int, device):
    """The (B,) bool image mask; None when every sample has an image (eager forwards only: reading it waits for the
    device, once per prefill)."""
    if image_mask is None:
        return None
    image_mask = torch.as_tensor(image_mask, device=device)
    if image_mask.shape != (batch_size,):
        raise ValueError(f"image_mask must have shape ({batch_size},), one flag per sample; got {tuple(image_mask.shape)}.")
    if not value_checks_enabled():
        return image_mask.bool()
    check_input_values(image_mask=image_mask)
    image_mask = image_mask.bool()
    return None if bool(image_mask.all()) else image_mask


def check_labels(name: str, targets, input_ids) -> None:
    """`labels` or `shift_labels` (None passes): the shape of `input_ids`, and integer ids."""
    if targets is None:
        return
    if input_ids is not None and targets.shape != input_ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(targets.shape)}.")
    if torch.is_floating_point(targets) or targets.dtype == torch.bool:
        raise TypeError(f"labels must hold integer token ids (-100 where no loss is taken), got dtype {targets.dtype}.")


def check_label_values(targets, vocab_size: int) -> None:
    """Label ids inside the vocabulary, or -100 (a value check: eager forwards only)."""
    if not value_checks_enabled():
        return
    invalid = (targets != -100) & ((targets < 0) | (targets >= vocab_size))
    if invalid.any():
        raise ValueError(
            f"labels holds ids outside the vocabulary [0, {vocab_size}) that are not -100, e.g. "
            f"{targets[invalid][:5].tolist()}; labels are token ids, -100 where no loss is taken."
        )
