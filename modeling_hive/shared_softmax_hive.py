"""HIVE's `shared_softmax` mode: the paper authors' fusion, image keys/values joined to an LLM layer's own
self-attention (one softmax over text and image keys, no gate).

Each connected LLM layer gets a `HiveSharedSoftmaxLayer`, which turns its level's projected image tokens into keys and
values the layer's attention can read: the layer's input norm, image k/v projections that start as copies of the
layer's `k_proj`/`v_proj`, a per-head RMSNorm on the keys and 2-D (row, column) rotary positions.

How they reach the attention: HIVE's pre-hook on that decoder layer passes them as the keyword argument
`hive_image_key_values`; transformers hands a decoder layer's keyword arguments on to its attention function, and the
LLM runs under the attention implementation `hive_sdpa`: transformers' sdpa, which appends the image keys/values to the
layer's own (after its rotary positions and its cache) and extends the mask so every text token sees every image key.
Layers without image keys, and every layer of a text-only forward, run transformers' sdpa untouched: without an image
the model is exactly the LLM.
"""

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface


SHARED_SOFTMAX_ATTENTION = "hive_sdpa"
# The rotary frequency pairs of an image key, split as the authors split them: the image's place in the sequence, its
# row, its column. HIVE's images are not in the token stream: they precede the text, at sequence position 0.
ROTARY_SECTIONS = (3, 3, 2)


@dataclass
class HiveImageKeyValues:
    """One connected layer's image keys/values, as its attention function receives them."""

    index: int  # the block
    key_states: torch.Tensor | None  # (B, kv_heads, N, head_dim); None in the build-time probe
    value_states: torch.Tensor | None
    image_mask: torch.Tensor | None  # (B,) bool: which samples have an image; None when all of them do
    consumed: set  # indices of the blocks whose keys reached an attention function in this forward


def image_key_mask(attention_mask, query: torch.Tensor, key: torch.Tensor, num_image_tokens: int, image_mask) -> torch.Tensor:
    """The LLM's mask over its own keys `(B, 1, T, S)` (None: causal), extended by `num_image_tokens` columns that
    every text query of a sample with an image may attend to. Boolean (True: attend) or additive, as given."""
    batch_size, query_length, key_length = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is None:  # sdpa's causal shortcut: query t is the (S - T + t)-th key
        positions = torch.arange(key_length, device=query.device)
        text = positions[None, :] <= positions[key_length - query_length :, None]  # (T, S)
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
    image_keys = image.key_states.to(key.dtype)
    attention_mask = image_key_mask(attention_mask, query, key, image_keys.shape[2], image.image_mask)
    key = torch.cat([key, image_keys], dim=2)  # (B, kv_heads, S + N, head_dim)
    value = torch.cat([value, image.value_states.to(value.dtype)], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


AttentionInterface.register(SHARED_SOFTMAX_ATTENTION, hive_sdpa_attention_forward)
AttentionMaskInterface.register(SHARED_SOFTMAX_ATTENTION, sdpa_mask)


def grid_positions(num_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of each of a level's tokens: the last `side**2` tokens form a square grid in row-major order, as
    encoders flatten their patches; tokens before them (CLS, registers) sit at (0, 0)."""
    side = max(int(num_tokens**0.5), 1)
    index = torch.arange(num_tokens, device=device) - (num_tokens - side * side)
    index = index.clamp(min=0)
    return index // side, index % side


def image_rotary_embeddings(rotary_emb: nn.Module, level_sizes: list[int], reference: torch.Tensor, layer_type=None, interleaved=None):
    """cos and sin `(1, N, rotary_dim)` for the image tokens of the given levels (concatenated), from the LLM's own
    rotary embedding (for `layer_type`, where it has one per layer type: Gemma3): the first 3/8 of the frequency pairs
    at position 0, the next 3/8 at the token's row, the last 2/8 at its column; and whether the LLM pairs dims as
    neighbours (GPT-J, Cohere) rather than as halves (Llama). `interleaved`: that pairing when already known (found
    from the values otherwise, which waits for the device)."""
    rows, columns = zip(*(grid_positions(size, reference.device) for size in level_sizes))
    rows, columns = torch.cat(rows)[None], torch.cat(columns)[None]  # (1, N)
    kwargs = {} if layer_type is None else {"layer_type": layer_type}
    # One call for all three: position 0 (the pairing test), the rows, the columns.
    positions = torch.cat([torch.ones_like(rows[:, :1]), rows, columns], dim=1)
    cos_all, sin_all = rotary_emb(reference, positions, **kwargs)
    dim, count = cos_all.shape[-1], rows.shape[1]
    if interleaved is None:  # position 1 tells the pairing
        interleaved = not torch.equal(cos_all[0, 0, : dim // 2], cos_all[0, 0, dim // 2 :])
    (cos_row, cos_column), (sin_row, sin_column) = cos_all[:, 1:].split(count, 1), sin_all[:, 1:].split(count, 1)
    pair = torch.arange(dim, device=reference.device)
    pair = pair // 2 if interleaved else pair % (dim // 2)  # which frequency pair each dim belongs to
    half = dim // 2
    first, second = (round(half * sum(ROTARY_SECTIONS[: i + 1]) / sum(ROTARY_SECTIONS)) for i in range(2))
    row, column = (pair >= first) & (pair < second), pair >= second  # the rest: sequence position 0, unrotated
    cos = torch.where(row, cos_row, torch.where(column, cos_column, torch.ones_like(cos_row)))
    sin = torch.where(row, sin_row, torch.where(column, sin_column, torch.zeros_like(sin_row)))
    return cos, sin, interleaved


def apply_rotary(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotates the first `cos.shape[-1]` dims of `(B, heads, N, head_dim)` states, pairing dims as the LLM does."""
    rotary_dim = cos.shape[-1]
    rotated, passed = states[..., :rotary_dim], states[..., rotary_dim:]
    if interleaved:
        turned = torch.stack([-rotated[..., 1::2], rotated[..., 0::2]], dim=-1).flatten(-2)
    else:
        first, second = rotated.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    rotated = rotated * cos[:, None] + turned * sin[:, None]
    return torch.cat([rotated, passed], dim=-1)


class HiveKeyRMSNorm(nn.Module):
    """Per-head RMSNorm on the image keys."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.variance_epsilon = eps

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(states.float(), (states.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normed.to(states.dtype)


class HiveSharedSoftmaxLayer(nn.Module):
    """Turns one level's projected image tokens into keys/values for one LLM layer's own self-attention: the layer's
    input norm and k/v projections (copies, trained with the connector while the LLM may stay frozen), then per-head
    RMSNorm and 2-D rotary positions on the keys. No gate: the image competes with the text in one softmax.

    Built from the decoder layer it serves (`input_layernorm`, `self_attn.k_proj`, `self_attn.v_proj`); call
    `copy_from(decoder_layer)` once the LLM's weights are loaded."""

    def __init__(self, decoder_layer: nn.Module, head_dim: int, eps: float):
        super().__init__()
        norm, attention = decoder_layer.input_layernorm, decoder_layer.self_attn
        self.input_layernorm = copy.deepcopy(norm)
        self.k_proj = copy.deepcopy(attention.k_proj)
        self.v_proj = copy.deepcopy(attention.v_proj)
        self.head_dim = head_dim
        self.k_norm = HiveKeyRMSNorm(head_dim, eps)

    @torch.no_grad()
    def copy_from(self, decoder_layer: nn.Module) -> None:
        """Sets the input norm and the image k/v projections to the decoder layer's own."""
        for mine, theirs in ((self.input_layernorm, decoder_layer.input_layernorm), (self.k_proj, decoder_layer.self_attn.k_proj),
                             (self.v_proj, decoder_layer.self_attn.v_proj)):  # fmt: skip
            mine.load_state_dict(theirs.state_dict())

    def forward(self, image_states: torch.Tensor, rotary: tuple | None = None):
        """(B, N, width) projected image tokens -> keys and values, each (B, kv_heads, N, head_dim). `rotary`: the
        keys' positions, as `image_rotary_embeddings` returns them (None: none)."""
        batch_size, num_tokens, _ = image_states.shape
        states = self.input_layernorm(image_states)
        shape = (batch_size, num_tokens, -1, self.head_dim)
        key_states = self.k_norm(self.k_proj(states).view(shape)).transpose(1, 2)
        value_states = self.v_proj(states).view(shape).transpose(1, 2)
        if rotary is not None:
            cos, sin, interleaved = rotary
            key_states = apply_rotary(key_states, cos.to(key_states.dtype), sin.to(key_states.dtype), interleaved)
        return key_states, value_states


def rotary_layer_type(language_model: nn.Module, text_layer: int):
    """The layer type whose rotary embedding layer `text_layer` uses, for an LLM whose rotary embedding takes one
    (Gemma3: sliding and full attention layers rotate with different bases); None otherwise."""
    rotary = getattr(language_model, "rotary_emb", None)
    if rotary is None or "layer_type" not in inspect.signature(rotary.forward).parameters:
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
        missing = [name for name, part in parts.items() if part is None or (name != "input_layernorm" and not isinstance(part, nn.Linear))]
        if missing:
            return (
                f"its decoder layer {text_layer} ({type(layer).__name__}) has no {' or '.join(f'`{m}`' for m in missing)}: the "
                "image keys start from the layer's input norm and its own, separate k/v linear projections (a fused QKV "
                "projection, as in GPT-2 or Phi-3, or a post-norm layer, as in OLMo-2, has none to copy)"
            )
    return None


def probe_rotary(language_model: nn.Module, text_layers: list[int]) -> tuple[bool | None, str | None]:
    """How the LLM's rotary embedding pairs dims (True: neighbours, False: halves, None: no rotary embedding), and why
    it cannot position image keys, or None: it must give (cos, sin) for positions, as Llama's does (Llama 4's complex
    frequencies do not). Needs real weights (one call on 4 positions per connected layer)."""
    rotary = getattr(language_model, "rotary_emb", None)
    if rotary is None:
        return None, None
    weight = language_model.get_input_embeddings().weight
    reference = torch.zeros(1, 4, 1, device=weight.device, dtype=torch.float32)
    pairings = set()
    for text_layer in text_layers:
        try:
            with torch.no_grad():
                pairings.add(image_rotary_embeddings(rotary, [4], reference, rotary_layer_type(language_model, text_layer))[2])
        except Exception as error:
            return None, (
                f"its rotary embedding ({type(rotary).__name__}) does not give (cos, sin) for positions as Llama's does "
                f"({type(error).__name__}: {error}), so image keys cannot be given row and column positions"
            )
    return pairings.pop() if len(pairings) == 1 else None, None
