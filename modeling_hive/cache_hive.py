"""Where HIVE keeps a forward's image keys and values: the vision context its hooks read during one LLM forward, and the
cache layers that carry them from the prefill to every decode step."""

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class HiveVisionContext:
    """What the cross-attention hooks read during one LLM forward: per-block image keys/values and the image mask."""

    key_values: list[tuple[torch.Tensor, torch.Tensor]]  # per block: (B, kv_heads, num_image_tokens, head_dim) x2
    image_mask: torch.Tensor | None  # (B,) bool: which samples have an image; None when all of them do
    cross_attentions: dict | None = None  # filled with block index -> weights when requested
    reached: dict | None = None  # the build-time probe: block index -> shape of the hidden states its layer received
    consumed: set = field(default_factory=set)  # shared_softmax: blocks whose image keys reached an attention function


class HiveCrossAttentionCacheLayer(DynamicLayer):
    """A cache layer holding one block's image keys/values (and the image mask), written once at prefill.

    It sits after the LLM's own layers in the same `Cache`, so beam search reordering and batch expansion apply to it.
    Its tensors are fixed buffers, as a `StaticLayer`'s: beam reordering, and a later prefill of the same shapes into
    the same cache (a user's static cache passed to several calls), write into them in place, so a compiled decode step
    keeps reading the same addresses (CUDA graphs replay on them).
    """

    is_compileable = True  # static caches skip the decode mask unless every layer says so
    is_croppable = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_mask = None

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor, image_mask: torch.Tensor | None) -> None:
        """Stores one block's image keys/values `(B, kv_heads, N, head_dim)` and the `(B,)` image mask (None: every
        sample has an image): in place into the buffers held, when shapes and dtypes match and no gradient flows,
        else as new buffers."""
        if self.keys is not None and not key_states.requires_grad and not self.keys.requires_grad and all(
            mine.shape == theirs.shape and mine.dtype == theirs.dtype and mine.device == theirs.device
            for mine, theirs in ((self.keys, key_states), (self.values, value_states))
        ):
            self.keys.copy_(key_states)
            self.values.copy_(value_states)
        else:
            self.keys, self.values = key_states, value_states
            if not key_states.requires_grad and not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(self.keys)  # as transformers' StaticLayer marks its buffers
                torch._dynamo.mark_static_address(self.values)
        if image_mask is not None and self.image_mask is not None and image_mask.shape == self.image_mask.shape:
            self.image_mask.copy_(image_mask)
        else:
            self.image_mask = None if image_mask is None else image_mask.clone()
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("Image keys/values are written once at prefill with `write`, never appended.")

    def get_seq_length(self) -> int:
        # Non-zero once written: `Cache.reorder_cache` and `batch_repeat_interleave` skip empty layers.
        return self.keys.shape[-2] if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length(), 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        """Empties the layer and keeps its buffers for the next prefill into the same cache."""
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        """Image keys/values do not grow with the text: assisted decoding's crops leave them alone."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: in place, so the buffers keep their addresses."""
        if self.is_initialized:
            beam_idx = beam_idx.to(self.keys.device)
            self.keys.copy_(self.keys.index_select(0, beam_idx))
            self.values.copy_(self.values.index_select(0, beam_idx))
            if self.image_mask is not None:
                self.image_mask.copy_(self.image_mask.index_select(0, beam_idx))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)
            if self.image_mask is not None:
                self.image_mask = self.image_mask.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys, self.values = self.keys[indices], self.values[indices]
            if self.image_mask is not None:
                self.image_mask = self.image_mask[indices]


def cache_image_key_values(cache: Cache, num_text_layers: int, key_values: list, image_mask: torch.Tensor | None) -> None:
    """Writes every block's image keys/values into `cache`, one `HiveCrossAttentionCacheLayer` per block after the
    LLM's own layers; layers already there are written in place (see `HiveCrossAttentionCacheLayer.write`)."""
    hive_layers = cache.layers[num_text_layers:]
    if len(hive_layers) != len(key_values) or not all(isinstance(layer, HiveCrossAttentionCacheLayer) for layer in hive_layers):
        while len(cache.layers) > num_text_layers and isinstance(cache.layers[-1], HiveCrossAttentionCacheLayer):
            cache.layers.pop()
        if len(cache.layers) != num_text_layers:
            raise ValueError(f"The cache has {len(cache.layers)} layers; expected the LLM's {num_text_layers}.")
        cache.layers.extend(HiveCrossAttentionCacheLayer() for _ in key_values)
    for layer, (key_states, value_states) in zip(cache.layers[num_text_layers:], key_values):
        layer.write(key_states, value_states, image_mask)


def cached_image_key_values(cache: Cache, num_text_layers: int, image_mask):
    """The image keys/values (one pair per block) and image mask a prefill wrote into `cache`; `(None, image_mask)`
    when it holds none (a text-only prompt)."""
    hive_layers = cache.layers[num_text_layers:]
    if not hive_layers or not all(layer.is_initialized for layer in hive_layers):
        return None, image_mask
    return [(layer.keys, layer.values) for layer in hive_layers], hive_layers[0].image_mask
