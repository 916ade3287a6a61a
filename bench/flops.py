"""Analytic FLOP counts of HIVE's prefill and stage-2 training step, read from its config.

A matmul of an `(m, k)` input by a `(k, n)` weight counts `2 * m * k * n` (so a linear layer costs 2 x its weight count
per token); attention counts `4 * queries * keys * width` (QK^T and AV), the full square for self-attention (a causal
mask is not discounted). Norms, activations, softmax, biases and embedding lookups are not counted.

Each function returns `{"matmul": ..., "attention": ...}`; their sum is the total.

Example:
    >>> from hive_vlm.bench.flops import hive_prefill_flops
    >>> from hive_vlm.bench.models import hive_bench_config
    >>> from hive_vlm.bench.sizes import BENCH_SIZES
    >>> flops = hive_prefill_flops(hive_bench_config(BENCH_SIZES["base"]), text_tokens=48)
    >>> round(sum(flops.values()) / 1e9)
    567
"""


def _head_dim(config, num_heads: int) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // num_heads


def _add(*counts: dict) -> dict:
    return {key: sum(count[key] for count in counts) for key in ("matmul", "attention")}


def _scale(count: dict, factor: float) -> dict:
    return {key: value * factor for key, value in count.items()}


def vision_encoder_flops(vision_config, images: int = 1) -> dict:
    """A ViT/SigLIP-style encoder: patch embedding, pre-norm layers, and SigLIP's attention-pooling head if it has one."""
    width, inner = vision_config.hidden_size, vision_config.intermediate_size
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    channels = getattr(vision_config, "num_channels", 3)
    matmul = 2 * patches * channels * vision_config.patch_size**2 * width
    matmul += vision_config.num_hidden_layers * 2 * patches * (4 * width * width + 2 * width * inner)
    attention = vision_config.num_hidden_layers * 4 * patches * patches * width
    if getattr(vision_config, "vision_use_head", False):
        # one probe query: q and out projections of 1 token, k/v of every patch, the MLP on 1 token
        matmul += 2 * (2 * width * width) + 2 * patches * 2 * width * width + 2 * 2 * width * inner
        attention += 4 * patches * width
    return _scale({"matmul": matmul, "attention": attention}, images)


def decoder_layer_flops(text_config, tokens: int, keys: int) -> dict:
    """One Llama/Qwen2-style decoder layer (GQA attention, gated MLP) on `tokens` queries attending to `keys` keys."""
    width, heads = text_config.hidden_size, text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = _head_dim(text_config, heads)
    weights = width * heads * head_dim * 2 + width * kv_heads * head_dim * 2 + 3 * width * text_config.intermediate_size
    return {"matmul": 2 * tokens * weights, "attention": 4 * tokens * keys * heads * head_dim}


def cross_attention_block_flops(config, tokens: int, image_tokens: int) -> dict:
    """One HIVE block on `tokens` text queries: q/o projections, attention over the image keys, the MLP (no K/V)."""
    width, heads = config.text_config.hidden_size, config.cross_attention_num_heads
    head_dim = width // heads
    weights = 2 * width * heads * head_dim + 2 * width * config.cross_attention_intermediate_size
    return {"matmul": 2 * tokens * weights, "attention": 4 * tokens * image_tokens * heads * head_dim}


def image_key_value_tokens(config) -> int:
    """Image tokens each block attends to: one level's patches (`paired`) or every level's (`all_levels`)."""
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    return patches * (1 if config.hierarchy_mode == "paired" else len(config.vision_layers))


def fusion_flops(config, images: int = 1) -> dict:
    """Every level's projector and every block's image K/V projection: what HIVE computes once per image."""
    vision_width, width = config.vision_config.hidden_size, config.text_config.hidden_size
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    head_dim = width // config.cross_attention_num_heads
    projectors = len(config.vision_layers) * 2 * patches * (vision_width * width + width * width)
    key_values = config.num_cross_attention_layers * 2 * image_key_value_tokens(config) * 2 * width * config.cross_attention_num_key_value_heads * head_dim
    return {"matmul": images * (projectors + key_values), "attention": 0}


def hive_prefill_flops(config, text_tokens: int, batch_size: int = 1, logits_positions: int = 1) -> dict:
    """HIVE's time-to-first-token forward: encoder, fusion, LLM with its cross-attention blocks, LM head."""
    text = config.text_config
    llm = _scale(decoder_layer_flops(text, text_tokens, text_tokens), text.num_hidden_layers)
    blocks = _scale(cross_attention_block_flops(config, text_tokens, image_key_value_tokens(config)), config.num_cross_attention_layers)
    head = {"matmul": 2 * logits_positions * text.hidden_size * text.vocab_size, "attention": 0}
    per_sample = _add(vision_encoder_flops(config.vision_config), fusion_flops(config), llm, blocks, head)
    return _scale(per_sample, batch_size)


def hive_stage2_step_flops(config, text_tokens: int, batch_size: int) -> dict:
    """One stage-2 step (encoder and LLM frozen; projectors and blocks trained), logits at every position.

    Backward costs 2 x forward for trained matmuls (input and weight gradients) and for every attention core on the
    gradient path, 1 x forward for frozen matmuls on that path (input gradient only), and nothing for the encoder or
    for the LLM layers below the first cross-attention block.
    """
    text = config.text_config
    first_block_layer = min(pair[1] for pair in config.cross_attention_layers)
    layer = decoder_layer_flops(text, text_tokens, text_tokens)
    on_path_layers = text.num_hidden_layers - first_block_layer
    blocks = _scale(cross_attention_block_flops(config, text_tokens, image_key_value_tokens(config)), config.num_cross_attention_layers)
    fusion = fusion_flops(config)
    head = {"matmul": 2 * text_tokens * text.hidden_size * text.vocab_size, "attention": 0}
    forward = _add(vision_encoder_flops(config.vision_config), fusion, _scale(layer, text.num_hidden_layers), blocks, head)
    backward = _add(
        _scale(fusion, 2),
        _scale(blocks, 2),
        {"matmul": on_path_layers * layer["matmul"], "attention": 2 * on_path_layers * layer["attention"]},
        head,
    )
    return _scale(_add(forward, backward), batch_size)
