"""HIVE's `shared_softmax` mode: the paper authors' fusion, image keys/values joined to an LLM layer's own
self-attention (one softmax over text and image keys, no gate).

Each connected LLM layer gets a `HiveSharedSoftmaxLayer`, which turns its level's projected image tokens into keys and
values the layer's attention can read: the layer's input norm, image k/v projections that start as copies of the
layer's `k_proj`/`v_proj`, a per-head RMSNorm on the keys and rotary positions laid out as the authors lay them out
(row and column on the fastest 6/8 of the frequencies, side // 2 on the rest; see `image_rotary_pairs`).

How they reach the attention: HIVE's pre-hook on that decoder layer passes them as the keyword argument
`hive_image_key_values`; transformers hands a decoder layer's keyword arguments on to its attention function, and the
LLM runs under the attention implementation `hive_sdpa`: transformers' sdpa, which appends the image keys/values to the
layer's own (after its rotary positions and its cache) and extends the mask so every text token sees every image key.
Layers without image keys, and every layer of a text-only forward, run transformers' sdpa untouched: without an image
the model is exactly the LLM.
"""

import copy
import functools
import inspect
import math
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from .backbones_hive import decoder_layers
from .configuration_hive import SHARED_SOFTMAX_NORMS
from .layers_hive import HiveRMSNorm


SHARED_SOFTMAX_ATTENTION = "hive_sdpa"
# An image key's rotary frequency pairs, as the authors' `apply_multimodal_rotary_pos_emb` (eugenelet/HIVE,
# llava_next/model/language_model/paidge_llama.py) assigns them: its positions are (row, column, side // 2) over
# `mrope_section = [3, 3, 2] * head_dim / 16`, and its reassembly gives the highest 6/8 of the frequencies to the grid
# (the row rotates at the even ones, the column at the odd ones) and the lowest 2/8 to the constant side // 2.
IMAGE_ROTARY_SECTIONS = (3, 3, 2)  # row, column, constant (side // 2): parts of the rotary pairs


@dataclass
class HiveImageKeyValues:
    """One connected layer's image keys/values, as its attention function receives them."""

    index: int  # the block
    key_states: torch.Tensor | None  # (B, kv_heads, N, head_dim); None in the build-time probe
    value_states: torch.Tensor | None
    image_mask: torch.Tensor | None  # (B,) bool: which samples have an image; None when all of them do
    consumed: set  # indices of the blocks whose keys reached an attention function in this forward
    layer: "HiveSharedSoftmaxLayer | None" = None  # the block: its query/key norms in `queries_and_keys` mode


def image_key_mask(attention_mask, query: torch.Tensor, key: torch.Tensor, num_image_tokens: int, image_mask) -> torch.Tensor:
    """The LLM's mask over its own keys `(B, 1, T, S)` (None: causal), extended by `num_image_tokens` columns that
    every text query of a sample with an image may attend to. Boolean (True: attend) or additive, as given."""
    batch_size, query_length, key_length = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is None:
        # The mask transformers' sdpa integration stands for with None (`sdpa_attention_forward`): one query sees every
        # key; several are causal with torch's upper-left alignment (query t sees keys 0..t), which transformers relies
        # on for a static cache's prefill, whose keys beyond the prompt are empty slots.
        positions = torch.arange(key_length, device=query.device)
        text = positions[None, :] <= positions[:query_length, None] if query_length > 1 else positions[None, :] >= 0  # (T, S)
        attention_mask = text[None, None].expand(batch_size, 1, query_length, key_length)
    attention_mask = attention_mask[..., :key_length]
    attention_mask = attention_mask.expand(batch_size, *attention_mask.shape[1:])
    image = torch.ones(batch_size, attention_mask.shape[1], query_length, num_image_tokens, dtype=torch.bool, device=query.device)
    if image_mask is not None:
        image = image & image_mask.to(query.device)[:, None, None, None]
    if attention_mask.dtype != torch.bool:
        image = torch.zeros_like(image, dtype=attention_mask.dtype).masked_fill(~image, torch.finfo(attention_mask.dtype).min)
    return torch.cat([attention_mask, image], dim=-1)


def hive_sdpa_attention_forward(module, query, key, value, attention_mask, *args, hive_image_key_values=None, **kwargs):
    """transformers' sdpa over the layer's keys and, when it has them, its image keys: one softmax over both."""
    image = hive_image_key_values
    if image is not None:
        image.consumed.add(image.index)
    if image is None or image.key_states is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if image.layer is not None and image.layer.q_norm is not None:  # the authors' norms, after the rotation and cache
        query, key = image.layer.normalize(query, key, image.image_mask)
    image_keys = image.key_states.to(key.device, key.dtype)
    attention_mask = image_key_mask(attention_mask, query, key, image_keys.shape[2], image.image_mask)
    key = torch.cat([key, image_keys], dim=2)  # (B, kv_heads, S + N, head_dim)
    value = torch.cat([value, image.value_states.to(value.device, value.dtype)], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


AttentionInterface.register(SHARED_SOFTMAX_ATTENTION, hive_sdpa_attention_forward)
AttentionMaskInterface.register(SHARED_SOFTMAX_ATTENTION, sdpa_mask)


def grid_positions(num_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of each of a level's tokens: the last `side**2` tokens form a square grid in row-major order, as
    encoders flatten their patches of a square image; tokens before them (CLS, registers) sit at (0, 0)."""
    side = max(math.isqrt(num_tokens), 1)
    index = (torch.arange(num_tokens, device=device) - (num_tokens - side * side)).clamp(min=0)
    return index // side, index % side


def image_rotary_pairs(pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of an image key's `pairs` rotary frequency pairs (in the LLM's order: pair 0 turns fastest), which of
    its positions turns it (0: row, 1: column, 2: the constant side // 2) and at which pair's frequency, as the
    authors' reassembly does: of the highest `grid` = 6/8 of the pairs, the row takes the even frequencies into the
    first pairs and the column the odd ones into the next; the lowest 2/8 turn by side // 2 at their own frequency.
    Exactly the authors' layout when `pairs` is a multiple of 8 (their split needs head_dim % 16 == 0).

    Example:
        >>> [t.tolist() for t in image_rotary_pairs(8)]
        [[0, 0, 0, 1, 1, 1, 2, 2], [0, 2, 4, 1, 3, 5, 6, 7]]
    """
    row, column, constant = IMAGE_ROTARY_SECTIONS
    grid = pairs * (row + column) // (row + column + constant)
    rows = (grid + 1) // 2  # the even frequencies of the grid's pairs
    pair = torch.arange(pairs)
    component = torch.where(pair < rows, 0, torch.where(pair < grid, 1, 2))
    frequency = torch.where(pair < rows, 2 * pair, torch.where(pair < grid, 2 * (pair - rows) + 1, pair))
    return component, frequency


def image_rotary_embeddings(rotary_emb: nn.Module, level_sizes: list[int], reference: torch.Tensor, layer_type=None,
                            halves_layout: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """cos and sin per frequency pair, `(1, N, rotary_dim // 2)`, for the image tokens of the given levels
    (concatenated), from the LLM's own rotary embedding (for `layer_type` where it has one per layer type, as Gemma3):
    each pair turned by the token's row, its column or its level's side // 2, at the frequency `image_rotary_pairs`
    gives it (the authors' layout; the image precedes the text, at sequence offset 0).

    `halves_layout`: whether `rotary_emb` repeats its frequencies as two halves (Llama) rather than neighbour by
    neighbour (Cohere); found from the values when None (which waits for the device)."""
    grids = [grid_positions(size, reference.device) for size in level_sizes]
    middles = [torch.full_like(row, max(math.isqrt(size), 1) // 2) for size, (row, _) in zip(level_sizes, grids)]
    count = sum(level_sizes)
    kwargs = {} if layer_type is None else {"layer_type": layer_type}
    # One call for all: position 1 (the layout), then every token's row, column and side // 2.
    layout = torch.ones(1, dtype=torch.long, device=reference.device)
    positions = torch.cat([layout, *(row for row, _ in grids), *(column for _, column in grids), *middles])[None]
    cos_all, sin_all = rotary_emb(reference, positions, **kwargs)  # (1, 1 + 3N, rotary_dim)
    half = cos_all.shape[-1] // 2
    if halves_layout is None:
        halves_layout = rotary_layout(cos_all[0, 0])
    component, frequency = (t.to(reference.device) for t in image_rotary_pairs(half))

    def assemble(values: torch.Tensor) -> torch.Tensor:
        values = values[:, 1:, :half] if halves_layout else values[:, 1:, 0::2]  # (1, 3N, pairs): per frequency pair
        values = values.unflatten(1, (3, count)).transpose(1, 2)  # (1, N, 3, pairs): by row, column, side // 2
        return values[:, :, component, frequency]  # (1, N, pairs)

    return assemble(cos_all), assemble(sin_all)


def rotary_layout(cos: torch.Tensor) -> bool:
    """Whether cos values `(rotary_dim,)` at a non-zero position repeat their frequencies as two halves."""
    half = cos.shape[-1] // 2
    return torch.equal(cos[:half], cos[half:])


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neighbours: bool) -> torch.Tensor:
    """Rotates the first `2 * cos.shape[-1]` dims of `(B, heads, N, head_dim)` states by per-pair cos/sin `(1, N,
    pairs)`, pairing dim i with i + pairs (Llama) or dim 2i with 2i + 1 (`neighbours`: GPT-J, Cohere, GLM).
    Adapted from the `rotate_half` functions of transformers' Llama and Cohere models."""
    rotary_dim = 2 * cos.shape[-1]
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    if neighbours:
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        turned = torch.stack([-rotated[..., 1::2], rotated[..., 0::2]], dim=-1).flatten(-2)
    else:
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
        first, second = rotated.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    rotated = rotated * cos[:, None] + turned * sin[:, None]
    return torch.cat([rotated, passed], dim=-1)


class HiveSharedSoftmaxLayer(nn.Module):
    """Turns one level's projected image tokens into keys/values for one LLM layer's own self-attention: the layer's
    input norm and k/v projections (copies, trained with the connector while the LLM may stay frozen), then per-head
    RMSNorm and 2-D rotary positions on the keys. No gate: the image competes with the text in one softmax.

    `norm` (`HiveConfig.shared_softmax_norm`): `"image_keys"` normalises the image keys before their rotation, and the
    layer's own queries and keys stay the LLM's; `"queries_and_keys"`, as the authors' code, normalises every key
    (text and image, `k_norm`) and every query (`q_norm`) of the layer after the rotation, in samples with an image.

    Built from the decoder layer it serves (`input_layernorm`, `self_attn.k_proj`, `self_attn.v_proj`); call
    `copy_from(decoder_layer)` once the LLM's weights are loaded."""

    def __init__(self, decoder_layer: nn.Module, head_dim: int, eps: float, norm: str = "image_keys"):
        super().__init__()
        if norm not in SHARED_SOFTMAX_NORMS:
            raise ValueError(f"shared_softmax_norm must be one of {SHARED_SOFTMAX_NORMS}, got {norm!r}.")
        norm_layer, attention = decoder_layer.input_layernorm, decoder_layer.self_attn
        self.input_layernorm = copy.deepcopy(norm_layer)
        self.k_proj = copy.deepcopy(attention.k_proj)
        self.v_proj = copy.deepcopy(attention.v_proj)
        self.head_dim = head_dim
        self.k_norm = HiveRMSNorm(head_dim, eps)
        self.q_norm = HiveRMSNorm(head_dim, eps) if norm == "queries_and_keys" else None

    @torch.no_grad()
    def copy_from(self, decoder_layer: nn.Module) -> None:
        """Sets the input norm and the image k/v projections to the decoder layer's own."""
        for mine, theirs in ((self.input_layernorm, decoder_layer.input_layernorm), (self.k_proj, decoder_layer.self_attn.k_proj),
                             (self.v_proj, decoder_layer.self_attn.v_proj)):  # fmt: skip
            mine.load_state_dict(theirs.state_dict())

    def forward(self, image_states: torch.Tensor, rotary: tuple | None = None):
        """(B, N, width) projected image tokens -> keys and values, each (B, kv_heads, N, head_dim). `rotary`: the
        keys' positions, `(cos, sin, neighbours)` as `image_rotary_embeddings` and `apply_rotary` take them (None:
        none)."""
        batch_size, num_tokens, _ = image_states.shape
        states = self.input_layernorm(image_states)
        shape = (batch_size, num_tokens, -1, self.head_dim)
        key_states = self.k_proj(states).view(shape).transpose(1, 2)
        value_states = self.v_proj(states).view(shape).transpose(1, 2)
        if self.q_norm is None:  # image_keys: normalised before the rotation
            key_states = self.k_norm(key_states)
        if rotary is not None:
            cos, sin, neighbours = rotary
            key_states = apply_rotary(key_states, cos.to(key_states.dtype), sin.to(key_states.dtype), neighbours)
        if self.q_norm is not None:  # queries_and_keys: after it, as the layer's own keys are (see `normalize`)
            key_states = self.k_norm(key_states)
        return key_states, value_states

    def normalize(self, query: torch.Tensor, key: torch.Tensor, image_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """queries_and_keys mode: the layer's own queries `(B, heads, T, head_dim)` and keys `(B, kv_heads, S,
        head_dim)`, rotated and cached, through `q_norm` and `k_norm`, in the samples with an image (`image_mask`,
        None: all); the others stay exactly the LLM's."""
        normed_query, normed_key = self.q_norm(query).to(query.dtype), self.k_norm(key).to(key.dtype)
        if image_mask is None:
            return normed_query, normed_key
        keep = image_mask.to(query.device)[:, None, None, None]
        return torch.where(keep, normed_query, query), torch.where(keep, normed_key, key)


@functools.cache
def takes_layer_type(rotary_class: type) -> bool:
    """Whether a rotary embedding class's forward takes a `layer_type` (read once per class, not per forward)."""
    return "layer_type" in inspect.signature(rotary_class.forward).parameters


def rotary_layer_type(language_model: nn.Module, text_layer: int):
    """The layer type whose rotary embedding layer `text_layer` uses, for an LLM whose rotary embedding takes one
    (Gemma3: sliding and full attention layers rotate with different bases); None otherwise."""
    rotary = getattr(language_model, "rotary_emb", None)
    if rotary is None or not takes_layer_type(type(rotary)):
        return None
    return language_model.config.layer_types[text_layer]


def shared_softmax_refusal(language_model: nn.Module, text_layers: list[int], layers) -> str | None:
    """Why an LLM cannot take shared-softmax fusion at these layers, or None: it needs sdpa attention and decoder
    layers with `input_layernorm` and a `self_attn` holding separate `k_proj`/`v_proj` projections."""
    implementation = language_model.config._attn_implementation
    if implementation not in ("sdpa", SHARED_SOFTMAX_ATTENTION):
        return (
            f"it runs attention as {implementation!r}, and shared_softmax joins the image keys to the LLM's own attention "
            "through sdpa; load or build it with attn_implementation='sdpa'"
        )
    for text_layer in text_layers:
        layer = layers[text_layer]
        attention = getattr(layer, "self_attn", None)
        parts = {"input_layernorm": getattr(layer, "input_layernorm", None), "self_attn.k_proj": getattr(attention, "k_proj", None),
                 "self_attn.v_proj": getattr(attention, "v_proj", None)}  # fmt: skip
        # A PEFT-wrapped projection (LoRA) holds the layer's own Linear as `base_layer`.
        missing = [name for name, part in parts.items()
                   if part is None or (name != "input_layernorm" and not isinstance(getattr(part, "base_layer", part), nn.Linear))]  # fmt: skip
        if missing:
            return (
                f"its decoder layer {text_layer} ({type(layer).__name__}) has no {' or '.join(f'`{m}`' for m in missing)}: the "
                "image keys start from the layer's input norm and its own, separate k/v linear projections (a fused QKV "
                "projection, as in GPT-2 or Phi-3, or a post-norm layer, as in OLMo-2, has none to copy)"
            )
    return None


def probe_rotary(language_model: nn.Module, text_layers: list[int], layers) -> tuple[tuple[bool, bool] | None, str | None]:
    """How the LLM rotates its keys, `(halves_layout, neighbours)` (None: it has no rotary embedding), and why image
    keys cannot be rotated the same way, or None.

    `halves_layout`: `rotary_emb` repeats its frequencies as two halves (else neighbour by neighbour). `neighbours`: the
    model's own `apply_rotary_pos_emb` pairs dim 2i with 2i + 1 (GPT-J, Cohere, GLM) rather than i with i + pairs
    (Llama); found by rotating a probe key with it and comparing with both pairings. Needs real weights."""
    rotary = getattr(language_model, "rotary_emb", None)
    config = language_model.config
    if rotary is None:
        if any(getattr(config, name, None) for name in ("rope_parameters", "rope_theta", "rotary_dim", "rotary_pct")):
            return None, "it uses rotary positions but has no model-level `rotary_emb` to give image keys theirs"
        return None, None
    weight = language_model.get_input_embeddings().weight
    styles = set()
    for text_layer in text_layers:
        attention = layers[text_layer].self_attn
        apply = getattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None)
        head_dim = getattr(attention, "head_dim", None) or config.hidden_size // config.num_attention_heads
        probe = torch.randn(1, 1, 1, head_dim, generator=torch.Generator().manual_seed(0)).to(weight.device)
        try:
            with torch.no_grad():
                layer_type = rotary_layer_type(language_model, text_layer)
                cos, sin = rotary(probe, torch.ones(1, 1, dtype=torch.long, device=weight.device), **({} if layer_type is None else {"layer_type": layer_type}))
                halves_layout = rotary_layout(cos[0, 0])
                theirs = apply(probe, probe, cos, sin)[1] if apply is not None else None
        except Exception as error:
            return None, (
                f"its rotary embedding ({type(rotary).__name__}) does not give (cos, sin) for positions as Llama's does "
                f"({type(error).__name__}: {error}), so image keys cannot be given row and column positions"
            )
        pairs = (lambda t: t[..., : t.shape[-1] // 2]) if halves_layout else (lambda t: t[..., 0::2])
        matches = [n for n in (False, True) if theirs is not None and torch.allclose(apply_rotary(probe, pairs(cos), pairs(sin), n), theirs, atol=1e-5)]
        if not matches:
            return None, (
                f"its keys are not rotated by a rotate-half or neighbour pairing of `rotary_emb`'s (cos, sin) "
                f"(`apply_rotary_pos_emb` in {type(attention).__module__}), so image keys cannot be rotated as its keys are"
            )
        styles.add((halves_layout, matches[0]))
    return (styles.pop() if len(styles) == 1 else None), None


def join_llm_attention(language_model: nn.Module, config) -> None:
    """Runs the LLM's attention as `hive_sdpa` (sdpa that appends a layer's image keys/values when its pre-hook hands
    them over), refusing an LLM it cannot join (see `shared_softmax_refusal`)."""
    layers = decoder_layers(language_model, config.text_config.num_hidden_layers)
    reason = shared_softmax_refusal(language_model, [pair[1] for pair in config.cross_attention_layers], layers)
    if reason is not None:
        raise ValueError(
            f"HIVE's shared_softmax mode cannot join the image to {type(language_model).__name__} "
            f"({config.text_config.model_type}): {reason}. Use cross_attention_mode='gated' for any other LLM."
        )
    language_model.config._attn_implementation = SHARED_SOFTMAX_ATTENTION


def check_llm_attention_request(attn_implementation) -> None:
    """Refuses an attention implementation other than sdpa for the LLM (`set_attn_implementation`'s argument)."""
    requested = attn_implementation
    if isinstance(requested, dict):
        requested = requested.get("text_config", requested.get(""))
    if requested not in (None, "sdpa"):
        raise ValueError(
            f"HIVE's shared_softmax mode joins the image keys to the LLM's own attention through sdpa; the LLM cannot run "
            f"as {requested!r}. Use cross_attention_mode='gated' for other attention implementations."
        )


@torch.no_grad()
def copy_llm_key_value_projections(blocks: nn.ModuleList, language_model: nn.Module, config) -> None:
    """Sets every block's input norm and image k/v projections to those of the LLM layer it feeds (the blocks'
    starting point; done when the model is built, after the LLM's weights are loaded)."""
    layers = decoder_layers(language_model, config.text_config.num_hidden_layers)
    for block, (_, text_layer) in zip(blocks, config.cross_attention_layers):
        block.copy_from(layers[text_layer])


def layer_image_key_values(decoder_layer: nn.Module, index: int, block: nn.Module, context, dtype: torch.dtype) -> HiveImageKeyValues:
    """What HIVE's pre-hook hands decoder layer `decoder_layer` for block `index`: the block's image keys/values from
    the forward's vision context (in the layer's dtype: the block may run in float32 beside a float16 or quantized LLM),
    and the block itself (in queries_and_keys mode its norms reach the layer's own queries and keys)."""
    checkpoint = getattr(decoder_layer, "_gradient_checkpointing_func", None)
    reentrant = getattr(checkpoint, "keywords", {}).get("use_reentrant")
    if decoder_layer.training and getattr(decoder_layer, "gradient_checkpointing", False) and reentrant:
        raise ValueError(
            "shared_softmax hands the image keys to the LLM's layers as keyword arguments, which reentrant activation "
            "checkpointing cannot differentiate through; enable it with gradient_checkpointing_kwargs={'use_reentrant': "
            "False} (transformers' default)."
        )
    key_states, value_states = (None, None) if context.reached is not None else context.key_values[index]
    if key_states is not None:
        key_states, value_states = key_states.to(dtype), value_states.to(dtype)
    return HiveImageKeyValues(index, key_states, value_states, context.image_mask, context.consumed, block)


def check_image_keys_consumed(context, language_model: nn.Module) -> None:
    """Refuses a forward whose image keys did not reach every connected layer's attention (the attention function was
    swapped after the model was built): the image would be ignored."""
    if len(context.consumed) != len(context.key_values):
        raise RuntimeError(
            f"The image keys/values reached {len(context.consumed)} of {len(context.key_values)} connected layers: the LLM "
            f"now runs attention as {language_model.config._attn_implementation!r}, not {SHARED_SOFTMAX_ATTENTION!r}, so "
            "the image would be ignored. Change the attention implementation with model.set_attn_implementation('sdpa'), "
            "which keeps shared_softmax's."
        )
