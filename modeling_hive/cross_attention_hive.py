"""HIVE's gated cross-attention block (`cross_attention_mode="gated"`): pre-norm cross-attention from the text to one
level's image tokens, then an MLP, each branch scaled by tanh of a gate that starts at `gate_init` (0: the LLM as it
was). The shared-softmax block, the paper authors' fusion, is in `shared_softmax_hive.py`."""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_hive import HiveConfig
from .layers_hive import HiveRMSNorm


def eager_cross_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention; also used whenever the attention weights are asked for."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, N)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return attn_output, attn_weights


class HiveCrossAttention(nn.Module):
    """Text queries attending to image keys/values, with optional per-head RMSNorm on q and k."""

    is_causal = False

    def __init__(self, config: HiveConfig):
        super().__init__()
        self.config = config
        width = config.text_config.hidden_size
        self.num_heads = config.cross_attention_num_heads
        self.num_key_value_heads = config.cross_attention_num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.cross_attention_dropout
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, width, bias=False)
        if config.cross_attention_qk_norm:
            self.q_norm = HiveRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = HiveRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def project_key_value(self, image_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, width) projected image features -> keys and values, each (B, kv_heads, N, head_dim)."""
        batch_size, num_tokens, _ = image_states.shape
        shape = (batch_size, num_tokens, self.num_key_value_heads, self.head_dim)
        key_states = self.k_norm(self.k_proj(image_states).view(shape)).transpose(1, 2)
        value_states = self.v_proj(image_states).view(shape).transpose(1, 2)
        return key_states, value_states

    def forward(self, hidden_states, key_states, value_states, output_attentions: bool = False):
        batch_size, seq_len, _ = hidden_states.shape
        query_states = self.q_norm(self.q_proj(hidden_states).view(batch_size, seq_len, self.num_heads, self.head_dim))
        query_states = query_states.transpose(1, 2)  # (B, nh, T, hs)
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_cross_attention_forward)
        if implementation == "eager":
            attention_interface = eager_cross_attention_forward
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask=None,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class HiveCrossAttentionMLP(nn.Module):
    def __init__(self, config: HiveConfig):
        super().__init__()
        width = config.text_config.hidden_size
        self.up_proj = nn.Linear(width, config.cross_attention_intermediate_size)
        self.act_fn = ACT2FN["gelu"]
        self.down_proj = nn.Linear(config.cross_attention_intermediate_size, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class HiveCrossAttentionLayer(GradientCheckpointingLayer):
    """Pre-norm gated cross-attention block: both the attention and the MLP branch are scaled by tanh(gate)."""

    def __init__(self, config: HiveConfig):
        super().__init__()
        width = config.text_config.hidden_size
        self.input_layernorm = HiveRMSNorm(width, eps=config.rms_norm_eps)
        self.cross_attn = HiveCrossAttention(config)
        self.cross_attn_attn_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))
        self.post_attention_layernorm = HiveRMSNorm(width, eps=config.rms_norm_eps)
        self.mlp = HiveCrossAttentionMLP(config)
        self.cross_attn_mlp_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))

    def forward(self, hidden_states, key_states=None, value_states=None, image_mask=None, output_attentions: bool = False):
        """Text `hidden_states` attending to this block's image keys/values. Without `key_states`, `hidden_states` are
        the block's projected image tokens `(B, N, width)` instead, and it returns their keys/values (done once per
        image). Both go through `forward`, positionally: a wrapper that gathers the block's weights around `forward`
        (FSDP) sees both, and a reentrant activation checkpoint keeps the gradient of both."""
        if key_states is None:
            return self.cross_attn.project_key_value(hidden_states)
        attn_output, attn_weights = self.cross_attn(
            self.input_layernorm(hidden_states), key_states, value_states, output_attentions=output_attentions
        )
        attn_output = self.cross_attn_attn_gate.tanh() * attn_output
        if image_mask is not None:  # None: every sample has an image
            row_mask = image_mask.to(hidden_states.dtype)[:, None, None]  # (B, 1, 1): samples without one skip the block
            attn_output = attn_output * row_mask
        hidden_states = hidden_states + attn_output
        mlp_output = self.cross_attn_mlp_gate.tanh() * self.mlp(self.post_attention_layernorm(hidden_states))
        if image_mask is not None:
            mlp_output = mlp_output * row_mask
        return hidden_states + mlp_output, attn_weights
