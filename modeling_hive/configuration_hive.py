"""HIVE model configuration."""

from .compatibility_hive import check_transformers_version  # noqa: F401  (first: refuses an unsupported transformers)

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


HIERARCHY_MODES = ("paired", "all_levels")
CROSS_ATTENTION_MODES = ("gated", "shared_softmax")
SHARED_SOFTMAX_NORMS = ("image_keys", "queries_and_keys")


def vision_num_levels(vision_config) -> int:
    """How many levels the encoder's `hidden_states` hold after its embeddings: one per layer for a single-scale
    encoder (ViT, SigLIP, DINOv2), one per stage for a multi-scale one (Swin, Hiera: `num_hidden_layers` counts stages;
    ConvNeXt, ResNet: `num_stages` or `depths`)."""
    for attribute in ("num_hidden_layers", "num_stages"):
        value = getattr(vision_config, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    depths = getattr(vision_config, "depths", None)
    if isinstance(depths, (list, tuple)) and depths:
        return len(depths)
    raise ValueError(
        f"HIVE cannot use a {vision_config.model_type} encoder: its config has no `num_hidden_layers`, `num_stages` or "
        "`depths`, so its levels (layers or stages) cannot be counted."
    )


def spread_layer_pairs(num_pairs: int, vision_depth: int, text_depth: int) -> list[list[int]]:
    """Spread `num_pairs` [vision_layer, text_layer] pairs evenly over both depths, ending at the last layers."""
    return [
        [round((k + 1) * vision_depth / num_pairs) - 1, round((k + 1) * text_depth / num_pairs) - 1]
        for k in range(num_pairs)
    ]


@strict
class HiveConfig(PreTrainedConfig):
    r"""
    Configuration of a HIVE model: a vision encoder connected to a causal LLM through gated cross-attention at
    several `[vision_layer, text_layer]` pairs.

    Args:
        vision_config (`dict` or `PreTrainedConfig`):
            Config of any transformers vision encoder that returns per-layer hidden states: a single-scale one
            (ViT, SigLIP vision, CLIP vision, DINOv2, ...), whose levels are its layers, or a multi-scale one (Swin,
            ConvNeXt, Hiera, ResNet, ...), whose levels are its stages, each with its own width and resolution
            (feature maps are flattened to tokens). A dict needs a `model_type`.
        text_config (`dict` or `PreTrainedConfig`):
            Config of any transformers causal LM (Llama, Qwen2, Mistral, GPT-2, ...). A dict needs a `model_type`.
        cross_attention_layers (`list[list[int]]`, *optional*):
            `[vision_layer, text_layer]` pairs, both 0-based. The output of encoder layer (or stage) `vision_layer`
            feeds a cross-attention block that runs just before LLM decoder layer `text_layer`. Defaults to
            `num_cross_attention_layers` pairs spread evenly over both depths. For a 4-stage encoder the default
            4 pairs give one per stage: the high-resolution early stages (edges, textures) feed early LLM layers,
            the low-resolution last stage (semantics) the last LLM layer.
        num_cross_attention_layers (`int`, *optional*, defaults to 4):
            Number of pairs to spread when `cross_attention_layers` is not given.
        hierarchy_mode (`str`, *optional*, defaults to `"paired"`):
            `"paired"`: each cross-attention block attends to its own vision layer (the paper's corresponding
            blocks). `"all_levels"`: each block attends to all selected vision layers at once, each level tagged
            by a learned level embedding.
        cross_attention_mode (`str`, *optional*, defaults to `"gated"`):
            How the LLM reads the image at each connected layer. `"gated"`: a gated cross-attention block (attention
            and MLP, each scaled by `tanh(gate)`) runs before the layer, Flamingo-style. `"shared_softmax"`: the paper
            authors' fusion; the level's image keys/values join the layer's own self-attention (one softmax over text
            and image keys, no gate), through image k/v projections copied from the layer's `k_proj`/`v_proj`, with
            per-head RMSNorm and 2-D rotary positions on the image keys. It needs an LLM with sdpa attention and
            separate `k_proj`/`v_proj`; the `cross_attention_*` head, MLP and gate fields do not apply to it.
        shared_softmax_norm (`str`, *optional*, defaults to `"image_keys"`):
            Which keys and queries `shared_softmax` normalises (per-head RMSNorm). `"image_keys"`: the image keys
            only, before their rotation; the layer's own queries and keys stay the LLM's, so with the LLM frozen
            (stage 2) the text attends to its own tokens exactly as the LLM does. `"queries_and_keys"`: as the
            authors' code, every query and every key (text and image) of a connected layer, after the rotation, in
            samples with an image; the projectors then start as theirs (Xavier-uniform weights, zero biases). The LLM's
            attention then changes at the connected layers as soon as an image is present, even with the LLM frozen;
            a text-only input is still exactly the LLM.
        cross_attention_num_heads (`int`, *optional*):
            Query heads of the cross-attention blocks. Defaults to the LLM's attention heads (for an LLM without
            attention, such as Mamba, heads of 64 dimensions, or one head when the width is not a multiple of 64).
        cross_attention_num_key_value_heads (`int`, *optional*):
            Key/value heads (grouped-query attention). Defaults to the LLM's own key/value heads when the query heads
            are defaulted too, else to `cross_attention_num_heads`.
        cross_attention_intermediate_size (`int`, *optional*):
            Width of the gated MLP inside each block. Defaults to 4 times the LLM width.
        cross_attention_qk_norm (`bool`, *optional*, defaults to `True`):
            Per-head RMSNorm on queries and keys.
        gate_init (`float`, *optional*, defaults to 0.0):
            Initial value of every gate; `tanh(gate)` scales both branches of each block, so 0.0 makes a fresh
            model behave exactly like the bare LLM.
        cross_attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the cross-attention probabilities.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the per-level projectors (LayerNorm, Linear, act, Linear).
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the blocks' RMSNorms.
        logits_by_causal_lm (`bool`, *optional*):
            How the LLM's causal-LM class makes its logits: `False` when they are its head applied to the last hidden
            state, `True` when its forward does more after the head (Gemma2's soft-capping, Cohere's scaling) and HIVE
            runs that forward. Measured once when the model is built (`inspection_hive.logits_by_causal_lm`) and saved
            with it, so that loading with offloaded or quantized weights never has to measure it; `None` (a folder saved
            before it was recorded) measures it when the model is loaded.
        backbone_inspection (`dict`, *optional*):
            What HIVE measured of its backbones when the model was built (`inspection_hive.inspect_backbones`): the
            encoder weights no connected layer uses and, in shared_softmax mode, how the LLM rotates its keys, with a
            fingerprint of what they depend on (the backbones' configs, the connections, the fusion, the running
            transformers). Loading a folder whose fingerprint still fits skips the measurements; `None`, or another
            fingerprint, measures again.

    Example:
        ```python
        >>> from transformers import LlamaConfig, ViTConfig
        >>> from modeling_hive import HiveConfig, HiveForConditionalGeneration
        >>> vision = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
        >>> text = LlamaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=100)
        >>> config = HiveConfig(vision_config=vision, text_config=text, cross_attention_layers=[[1, 1], [3, 3]])
        >>> model = HiveForConditionalGeneration(config)
        ```
    """

    model_type = "hive"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    cross_attention_layers: list | None = None
    num_cross_attention_layers: int = 4
    hierarchy_mode: str = "paired"
    cross_attention_mode: str = "gated"
    shared_softmax_norm: str = "image_keys"
    cross_attention_num_heads: int | None = None
    cross_attention_num_key_value_heads: int | None = None
    cross_attention_intermediate_size: int | None = None
    cross_attention_qk_norm: bool = True
    gate_init: float = 0.0
    cross_attention_dropout: float = 0.0
    projector_hidden_act: str = "gelu"
    rms_norm_eps: float = 1e-6
    logits_by_causal_lm: bool | None = None
    backbone_inspection: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for key in ("vision_config", "text_config"):
            value = getattr(self, key)
            if isinstance(value, dict) and "model_type" not in value:
                raise ValueError(f"{key} is a dict without a model_type; add one, e.g. {{'model_type': 'vit', ...}}.")
        super().__post_init__(**kwargs)
        # The LLM's own tying decides ours (GPT-2 and small Qwen2 models tie lm_head to the input embeddings).
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        # An MAE-style encoder (ViT-MAE) drops `mask_ratio` of its patches at random in every forward, in eval mode too:
        # inside HIVE it keeps them all (and `HiveModel.encode_image` keeps their order).
        if getattr(self.vision_config, "mask_ratio", None):
            self.vision_config.mask_ratio = 0.0
        self._validate_hive_fields()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """As `PreTrainedConfig.get_config_dict`, refusing a folder that holds another model type or no sub-configs."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {model_type!r} model, not a HIVE model; build HIVE around it "
                "with HiveForConditionalGeneration.from_backbones(vision_model, text_model)."
            )
        missing = [key for key in ("vision_config", "text_config") if not config_dict.get(key)]
        if missing:
            raise ValueError(f"{pretrained_model_name_or_path}: the HIVE config has no {' or '.join(missing)}.")
        return config_dict, kwargs

    def __getattr__(self, name):
        """Called only for a missing attribute. `image_token_id` gets its reason: trainers that keep a VLM from sampling
        its image token (TRL's GRPOTrainer and RLOOTrainer) read it, and HIVE has none."""
        if name == "image_token_id":
            raise AttributeError(
                "HiveConfig has no image_token_id: HIVE puts no image token in the text (the image reaches the LLM "
                "through cross-attention), so there is no image token to keep from being sampled. Load the model and set "
                "model.config.image_token_id to a token it must never generate (e.g. the pad token, when it is not the "
                "end-of-sequence token)."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def vision_layers(self) -> list[int]:
        """The selected vision layers (the hierarchy's levels), sorted and without repeats."""
        return sorted({pair[0] for pair in self.cross_attention_layers})

    def _validate_hive_fields(self):
        vision_depth = vision_num_levels(self.vision_config)
        text_depth = self.text_config.num_hidden_layers
        text_width = self.text_config.hidden_size

        if self.hierarchy_mode not in HIERARCHY_MODES:
            raise ValueError(f"hierarchy_mode must be one of {HIERARCHY_MODES}, got {self.hierarchy_mode!r}.")
        if self.cross_attention_mode not in CROSS_ATTENTION_MODES:
            raise ValueError(f"cross_attention_mode must be one of {CROSS_ATTENTION_MODES}, got {self.cross_attention_mode!r}.")
        if self.shared_softmax_norm not in SHARED_SOFTMAX_NORMS:
            raise ValueError(f"shared_softmax_norm must be one of {SHARED_SOFTMAX_NORMS}, got {self.shared_softmax_norm!r}.")
        if self.shared_softmax_norm != SHARED_SOFTMAX_NORMS[0] and self.cross_attention_mode != "shared_softmax":
            raise ValueError(
                f"shared_softmax_norm={self.shared_softmax_norm!r} applies to cross_attention_mode='shared_softmax' only; "
                f"the gated blocks have their own cross_attention_qk_norm. Drop it, or set cross_attention_mode='shared_softmax'."
            )
        if self.cross_attention_mode == "shared_softmax" and not getattr(self.text_config, "num_attention_heads", None):
            raise ValueError(
                f"cross_attention_mode='shared_softmax' joins the image to the LLM's own self-attention, and the "
                f"{self.text_config.model_type} LLM has none; use cross_attention_mode='gated'."
            )

        if self.cross_attention_layers is None:
            if not 1 <= self.num_cross_attention_layers <= text_depth:
                raise ValueError(
                    f"num_cross_attention_layers must be between 1 and the LLM's {text_depth} layers, "
                    f"got {self.num_cross_attention_layers}."
                )
            self.cross_attention_layers = spread_layer_pairs(self.num_cross_attention_layers, vision_depth, text_depth)
        pairs = [list(pair) for pair in self.cross_attention_layers]
        if not pairs:
            raise ValueError("cross_attention_layers must hold at least one [vision_layer, text_layer] pair.")
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
                raise ValueError(f"cross_attention_layers entries must be [vision_layer, text_layer] ints, got {pair}.")
            vision_layer, text_layer = pair
            if not 0 <= vision_layer < vision_depth:
                raise ValueError(
                    f"cross_attention_layers: vision layer {vision_layer} is out of range; the encoder has "
                    f"{vision_depth} levels, layers or stages (0 to {vision_depth - 1})."
                )
            if not 0 <= text_layer < text_depth:
                raise ValueError(
                    f"cross_attention_layers: text layer {text_layer} is out of range; the LLM has "
                    f"{text_depth} layers (0 to {text_depth - 1})."
                )
        text_layers = [pair[1] for pair in pairs]
        repeated = sorted({t for t in text_layers if text_layers.count(t) > 1})
        if repeated:
            raise ValueError(f"cross_attention_layers: text layer(s) {repeated} used more than once; each LLM layer takes one block.")
        self.cross_attention_layers = sorted(pairs, key=lambda pair: pair[1])
        self.num_cross_attention_layers = len(pairs)

        if self.cross_attention_num_heads is None:
            # The LLM's own heads; a state-space LLM (Mamba) has none: heads of 64 dimensions (one below 64 wide).
            text_heads = getattr(self.text_config, "num_attention_heads", None)
            self.cross_attention_num_heads = text_heads or (text_width // 64 if text_width % 64 == 0 else 1)
            if self.cross_attention_num_key_value_heads is None:
                # Grouped like the LLM's own attention: the cached image K/V then cost what the LLM's K/V cost.
                self.cross_attention_num_key_value_heads = getattr(self.text_config, "num_key_value_heads", None)
        if self.cross_attention_num_key_value_heads is None:
            self.cross_attention_num_key_value_heads = self.cross_attention_num_heads
        if self.cross_attention_num_heads < 1 or text_width % self.cross_attention_num_heads:
            raise ValueError(
                f"cross_attention_num_heads ({self.cross_attention_num_heads}) must divide the LLM width ({text_width})."
            )
        if (
            self.cross_attention_num_key_value_heads < 1
            or self.cross_attention_num_heads % self.cross_attention_num_key_value_heads
        ):
            raise ValueError(
                f"cross_attention_num_key_value_heads ({self.cross_attention_num_key_value_heads}) must divide "
                f"cross_attention_num_heads ({self.cross_attention_num_heads})."
            )
        if self.cross_attention_intermediate_size is None:
            self.cross_attention_intermediate_size = 4 * text_width
        if self.cross_attention_intermediate_size < 1:
            raise ValueError(f"cross_attention_intermediate_size must be positive, got {self.cross_attention_intermediate_size}.")
        if not 0.0 <= self.cross_attention_dropout < 1.0:
            raise ValueError(f"cross_attention_dropout must be in [0, 1), got {self.cross_attention_dropout}.")


__all__ = ["HiveConfig"]
