"""HIVE, transformers' LLaVA and HIVE's shared-softmax mode built from the same backbone configs with the same random
backbone weights.

Example:
    >>> from hive_vlm.bench.models import build_models
    >>> from hive_vlm.bench.sizes import BENCH_SIZES
    >>> hive, llava = build_models(BENCH_SIZES["toy"])
    >>> hive.model.language_model.embed_tokens.weight.equal(llava.model.language_model.embed_tokens.weight)
    True
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache, LlavaConfig, LlavaForConditionalGeneration

from modeling_hive import HiveConfig, HiveForConditionalGeneration
from modeling_hive.modeling_hive import HiveCrossAttentionCacheLayer

from .sizes import HiveBenchSize


def hive_bench_config(size: HiveBenchSize) -> HiveConfig:
    """HIVE's defaults (4 pairs spread evenly, `paired` mode) with the LLM's grouped-query K/V head count."""
    text = size.text_config()
    return HiveConfig(
        vision_config=size.vision_config().to_dict(),
        text_config=text.to_dict(),
        cross_attention_num_key_value_heads=text.num_key_value_heads,
    )


def llava_bench_config(size: HiveBenchSize) -> LlavaConfig:
    """LLaVA-1.5 fusion: the second-to-last encoder layer, every patch, a 2-layer MLP projector, image tokens inline."""
    text = size.text_config()
    return LlavaConfig(
        vision_config=size.vision_config().to_dict(),
        text_config=text.to_dict(),
        image_token_id=text.vocab_size - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
    )


def build_models(size: HiveBenchSize, device="cpu", dtype=torch.float32, seed: int = 0):
    """Returns `(hive, llava)` in eval mode; LLaVA's encoder, LLM and LM head carry HIVE's (random) weights."""
    torch.manual_seed(seed)
    with torch.device(device):
        hive = HiveForConditionalGeneration(hive_bench_config(size))
        llava = LlavaForConditionalGeneration(llava_bench_config(size))
    llava.model.vision_tower.load_state_dict(hive.model.vision_model.state_dict())
    llava.model.language_model.load_state_dict(hive.model.language_model.state_dict())
    llava.lm_head.load_state_dict(hive.lm_head.state_dict())
    return hive.to(dtype).eval(), llava.to(dtype).eval()


def build_shared_softmax(hive: HiveForConditionalGeneration, device="cpu", dtype=torch.float32) -> HiveForConditionalGeneration:
    """HIVE at the same connections in `cross_attention_mode="shared_softmax"` (the paper authors' fusion), in eval
    mode, with `hive`'s encoder, LLM, head and projectors; its image k/v projections start from the LLM's."""
    config = HiveConfig.from_dict({**hive.config.to_dict(), "cross_attention_mode": "shared_softmax"})
    with torch.device(device):
        shared = HiveForConditionalGeneration(config)
    for name in ("vision_model", "language_model", "multi_modal_projectors"):
        getattr(shared.model, name).load_state_dict(getattr(hive.model, name).state_dict())
    shared.lm_head.load_state_dict(hive.lm_head.state_dict())
    shared.model.copy_llm_key_value_projections()
    return shared.to(dtype).eval()


@dataclass
class BenchBatch:
    """The same prompt for both models: HIVE gets the text alone, LLaVA the text with image tokens after a prefix.

    Shapes: `input_ids` (B, T); `llava_input_ids` and `llava_labels` (B, prefix + images * N + T - prefix);
    `pixel_values` (B, C, H, W), one image per sample.
    """

    input_ids: torch.Tensor
    llava_input_ids: torch.Tensor
    llava_labels: torch.Tensor
    pixel_values: torch.Tensor
    prefix_tokens: int


def bench_batch(size: HiveBenchSize, batch_size: int, images_per_sample: int = 1, device="cpu", dtype=torch.float32, seed: int = 0) -> BenchBatch:
    """Random token ids (never LLaVA's image token) and random pixels; LLaVA's prompt holds `images_per_sample` images."""
    generator = torch.Generator().manual_seed(seed)
    vision, text = size.vision_config(), size.text_config()
    image_token_id = text.vocab_size - 1
    input_ids = torch.randint(0, image_token_id, (batch_size, size.text_tokens), generator=generator)
    prefix = min(4, size.text_tokens // 2)
    image_ids = torch.full((batch_size, images_per_sample * size.image_tokens), image_token_id)
    llava_input_ids = torch.cat([input_ids[:, :prefix], image_ids, input_ids[:, prefix:]], dim=1)
    llava_labels = llava_input_ids.masked_fill(llava_input_ids == image_token_id, -100)
    pixel_values = torch.randn((batch_size, vision.num_channels, vision.image_size, vision.image_size), generator=generator)
    return BenchBatch(
        input_ids=input_ids.to(device),
        llava_input_ids=llava_input_ids.to(device),
        llava_labels=llava_labels.to(device),
        pixel_values=pixel_values.to(device, dtype),
        prefix_tokens=prefix,
    )


def cache_with_image_key_values(model: HiveForConditionalGeneration, key_values, image_mask: torch.Tensor | None = None) -> DynamicCache:
    """An empty LLM cache followed by HIVE's cross-attention cache layers holding `key_values`.

    Passing it to `model(input_ids=..., cache=cache)` runs HIVE's LLM side on precomputed image keys/values,
    exactly as a decode step reads them after a prefill.
    """
    cache = DynamicCache(config=model.config.text_config)
    for key_states, value_states in key_values:
        layer = HiveCrossAttentionCacheLayer()
        layer.write(key_states, value_states, image_mask)
        cache.layers.append(layer)
    return cache


def tile_image_tokens(states: torch.Tensor, images: int) -> torch.Tensor:
    """(B, N, D) -> (B, images * N, D): one image's tokens repeated, standing in for `images` images."""
    return states.repeat(1, images, 1)


def cache_bytes(cache) -> dict:
    """Bytes of every tensor a cache holds after prefill, split into the LLM's own layers and HIVE's image layers."""
    self_attention = cross_attention = 0
    for layer in cache.layers:
        tensors = [getattr(layer, name, None) for name in ("keys", "values", "image_mask")]
        nbytes = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        if isinstance(layer, HiveCrossAttentionCacheLayer):
            cross_attention += nbytes
        else:
            self_attention += nbytes
    return {"total": self_attention + cross_attention, "self_attention": self_attention, "cross_attention": cross_attention}
