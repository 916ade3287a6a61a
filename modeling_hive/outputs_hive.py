"""HIVE's output classes: `ModelOutput` dataclasses whose cache field has the running transformers' name."""

from dataclasses import field, make_dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .compatibility_hive import CACHE_NAME


def hive_output_class(name: str, doc: str, first_fields: list[str]) -> type:
    """A `ModelOutput` dataclass whose cache field has the running transformers' name (`cache` from 5.25 on).

    Built rather than declared because the field's name depends on the installed version: transformers 5.25 reads
    `outputs.cache` (and warns on `past_key_values`), 5.23-5.24 read `outputs.past_key_values`.
    """
    names = [*first_fields, CACHE_NAME, "hidden_states", "attentions", "image_outputs", "vision_hidden_states", "cross_attentions"]
    # __module__ in the namespace: ModelOutput registers the class with torch's pytree under it at creation.
    fields = [(n, object, field(default=None)) for n in names]
    return make_dataclass(name, fields, bases=(ModelOutput,), namespace={"__module__": __name__, "__doc__": doc})


_OUTPUT_FIELDS_DOC = f"""
        {CACHE_NAME} (`Cache`, *optional*):
            The LLM's self-attention cache, followed by one `HiveCrossAttentionCacheLayer` per cross-attention block
            holding the image keys/values computed at prefill. Named `cache` under transformers 5.25 and later,
            `past_key_values` before, as the running transformers expects.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The LLM's per-layer hidden states, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The LLM's self-attention weights, when `output_attentions=True`.
        image_outputs (`BaseModelOutputWithPooling`, *optional*):
            What `get_image_features` returns for `pixel_values` (None on text-only and decode steps).
        vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            One `(batch_size, num_patches, vision_hidden_size)` tensor per selected vision layer (ascending layer
            order, see `config.vision_layers`), when `output_vision_features=True`.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
            One `(batch_size, num_heads, sequence_length, num_image_tokens)` tensor per cross-attention block (in
            `config.cross_attention_layers` order), when `output_cross_attentions=True`. In `all_levels` mode the
            image tokens are the levels' tokens concatenated in `config.vision_layers` order.
"""

HiveModelOutputWithPast = hive_output_class(
    "HiveModelOutputWithPast",
    """Output of `HiveModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Hidden states of the LLM's last layer."""
    + _OUTPUT_FIELDS_DOC,
    ["last_hidden_state"],
)

HiveCausalLMOutputWithPast = hive_output_class(
    "HiveCausalLMOutputWithPast",
    """Output of `HiveForConditionalGeneration`.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
            Next-token cross-entropy over the positions whose label is not -100 (0.0 when there are none).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Next-token scores."""
    + _OUTPUT_FIELDS_DOC,
    ["loss", "logits"],
)


def image_features_output(encoder_outputs, image_levels: list[torch.Tensor]) -> BaseModelOutputWithPooling:
    """`HiveModel.get_image_features`' output from the encoder's output and the projected levels (each
    `(B, num_tokens, text_hidden_size)`), concatenated along the tokens."""
    return BaseModelOutputWithPooling(
        last_hidden_state=encoder_outputs.last_hidden_state,
        pooler_output=torch.cat(image_levels, dim=1),
        hidden_states=encoder_outputs.hidden_states,
        attentions=getattr(encoder_outputs, "attentions", None),  # convolutional encoders have none
    )
