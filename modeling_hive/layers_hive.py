"""HIVE's small building blocks, shared by both fusions: the RMSNorm of its blocks and key/query norms, and the
projector that maps one vision level into the LLM's width."""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from .configuration_hive import HiveConfig


class HiveRMSNorm(nn.Module):
    """RMSNorm over the last dimension (a block's width, or a head's), computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.variance_epsilon)
        return self.weight * normed.to(input_dtype)


class HiveMultiModalProjector(nn.Module):
    """Maps one vision level (of width `vision_width`) into the LLM width: LayerNorm, Linear, act, Linear."""

    def __init__(self, config: HiveConfig, vision_width: int):
        super().__init__()
        text_width = config.text_config.hidden_size
        self.layer_norm = nn.LayerNorm(vision_width)
        self.linear_1 = nn.Linear(vision_width, text_width)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_width, text_width)

    def forward(self, vision_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(vision_hidden_states))))
