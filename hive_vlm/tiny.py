"""Tiny backbone configs for every supported encoder and LLM family: for tests, the offline demo and smoke benches.

Example:
    >>> from hive_vlm.tiny import tiny_hive_config
    >>> from modeling_hive import HiveForConditionalGeneration
    >>> model = HiveForConditionalGeneration(tiny_hive_config("vit", "llama"))
"""

from transformers import (
    CLIPVisionConfig,
    ConvNextConfig,
    Dinov2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    SiglipVisionConfig,
    SwinConfig,
    ViTConfig,
)

from modeling_hive import HiveConfig


def tiny_vision_config(family: str, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 4):
    """A small encoder of the given family: single-scale ("vit", "siglip", "clip", "dinov2") with `num_layers` layers,
    or multi-scale ("swin", "convnext") with `num_layers` stages whose widths double from `hidden_size` and whose
    resolution halves from `image_size / 4` (their stems patch by 2 and 4 pixels; `patch_size` is for the others)."""
    if family == "swin":  # stage i ends in a patch merge that doubles its width (the last stage has none)
        return SwinConfig(image_size=image_size, patch_size=2, embed_dim=hidden_size // 2, depths=[1] * num_layers,
                          num_heads=[2] * num_layers, window_size=2, mlp_ratio=2.0)
    if family == "convnext":
        return ConvNextConfig(image_size=image_size, patch_size=4, hidden_sizes=[hidden_size * 2**i for i in range(num_layers)],
                              depths=[1] * num_layers)
    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        image_size=image_size,
        patch_size=patch_size,
    )
    if family == "vit":
        return ViTConfig(**common)
    if family == "siglip":
        return SiglipVisionConfig(**common)
    if family == "clip":
        return CLIPVisionConfig(**common)
    if family == "dinov2":
        return Dinov2Config(**{k: v for k, v in common.items() if k != "intermediate_size"}, mlp_ratio=2)
    raise ValueError(f"Unknown vision family {family!r}; choose vit, siglip, clip, dinov2, swin or convnext.")


def tiny_text_config(family: str, vocab_size: int = 128, hidden_size: int = 32, num_layers: int = 4, **kwargs):
    """A small causal LM of the given family ("llama", "qwen2", "mistral", "gpt2")."""
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=2, n_positions=256, bos_token_id=1, eos_token_id=2, **kwargs)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=256,
        **kwargs,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        return MistralConfig(**common)
    raise ValueError(f"Unknown text family {family!r}; choose llama, qwen2, mistral or gpt2.")


def tiny_hive_config(vision_family: str = "vit", text_family: str = "llama", vision_kwargs=None, text_kwargs=None, tokenizer=None, **hive_kwargs):
    """A tiny HIVE config; `hive_kwargs` are HiveConfig fields (default pairs: [[1, 1], [3, 3]]).

    With `tokenizer`, the LLM's vocabulary size and pad/bos/eos ids are the tokenizer's.
    """
    hive_kwargs.setdefault("cross_attention_layers", [[1, 1], [3, 3]])
    if tokenizer is not None:
        text_kwargs = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **(text_kwargs or {}),
        }
    return HiveConfig(
        vision_config=tiny_vision_config(vision_family, **(vision_kwargs or {})).to_dict(),
        text_config=tiny_text_config(text_family, **(text_kwargs or {})).to_dict(),
        **hive_kwargs,
    )
