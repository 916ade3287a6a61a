"""Reading any transformers encoder and causal LM: their levels and widths, their decoder layers, a vision tower inside
a larger checkpoint, and the LLM's own causal-LM forward that HIVE runs around its modules. Imports only torch and
transformers, like every file the Hub receives."""

import functools
import inspect
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING
from transformers.utils import logging

from .configuration_hive import HiveConfig


logger = logging.get_logger(__name__)


def decoder_layers(language_model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The LLM's list of decoder layers, found by structure: the one child ModuleList with one entry per layer of its
    decoder (`get_decoder()`: the base model itself for Llama or GPT-2, `decoder` for OPT).
    `inspection_hive.check_cross_attention_is_reached` then proves that the layers are called with the vision context."""
    decoder = language_model.get_decoder()
    candidates = [module for module in decoder.children() if isinstance(module, nn.ModuleList) and len(module) == num_layers]
    if len(candidates) != 1:
        raise ValueError(
            f"{type(decoder).__name__} has no single ModuleList of its {num_layers} decoder layers; "
            "HIVE supports decoder-only LLMs whose base model holds its layers in one list."
        )
    return candidates[0]


def base_model_name(causal_lm: nn.Module, base_model_class: type) -> str:
    """The attribute of a causal LM that holds its base model (`model` for Llama, `transformer` for GPT-2), found by
    type: `base_model_prefix` does not always name it (Llama4)."""
    return next(name for name, child in causal_lm.named_children() if type(child) is base_model_class)


class HiveComputedBaseModel(nn.Module):
    """Stands in for a causal LM's base model and returns the last hidden states HIVE computed, so that the causal LM's
    own forward maps them to logits (see `HiveForConditionalGeneration.llm_logits`)."""

    def __init__(self, last_hidden_state: torch.Tensor):
        super().__init__()
        self.last_hidden_state = last_hidden_state

    def forward(self, *args, **kwargs) -> BaseModelOutputWithPast:
        return BaseModelOutputWithPast(last_hidden_state=self.last_hidden_state)


class HiveScaledHead(nn.Module):
    """An output layer times a constant: large logits, for `inspection_hive.logits_by_causal_lm`."""

    def __init__(self, head: nn.Module, scale: float):
        super().__init__()
        self.head, self.scale = head, scale

    @property
    def weight(self) -> torch.Tensor:  # some causal LMs read their head's dtype from it
        return self.head.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_states) * self.scale


def causal_lm_head_plan(text_config, tp_plan: dict) -> str | None:
    """The tensor-parallel plan entry of the LLM's own causal-LM head, when HIVE's plan shards the LLM (whose input
    embeddings a tied head must be sharded with); None for an LLM without a plan (GPT-2)."""
    causal_lm_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(text_config), None)
    head_plan = (getattr(causal_lm_class, "_tp_plan", None) or {}).get("lm_head")
    if head_plan is not None and any(key.startswith("model.language_model.") for key in tp_plan):
        return head_plan
    return None


def probe_image_shape(vision_config) -> tuple[int, int, int, int]:
    """(1, channels, size, size): one image of the size the encoder expects, for the build-time probes."""
    size = getattr(vision_config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return (1, getattr(vision_config, "num_channels", 3), size, size)


@contextmanager
def eval_mode(module: nn.Module):
    """`module` in eval mode for the block; every submodule's own mode is restored after."""
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def as_tokens(states: torch.Tensor) -> torch.Tensor:
    """One level as `(B, num_tokens, width)`: a multi-scale encoder's `(B, C, H, W)` feature map is flattened row by
    row; token sequences pass unchanged."""
    return states.flatten(2).transpose(1, 2) if states.ndim == 4 else states


def in_order_noise(pixel_values: torch.Tensor, patch_size) -> torch.Tensor:
    """The `noise` an MAE-style encoder sorts to order (and drop) its patches, ascending: every patch stays in place,
    so one image always gives one answer (its mask ratio is 0 inside HIVE, see `HiveConfig`). (B, num_patches)"""
    height, width = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    num_patches = (pixel_values.shape[-2] // height) * (pixel_values.shape[-1] // width)
    return torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32).expand(pixel_values.shape[0], -1)


def encoder_outputs_on_meta(vision: nn.Module, vision_config, requires_grad: bool = False):
    """The encoder's output for one probe image, computed on the meta device: shapes and autograd graph, with no
    compute or memory whatever the encoder's size (its own weights may still be on meta). Returns the output and the
    meta leaves that stood in for its parameters, by name."""
    parameters = dict(vision.named_parameters())
    dtype = next((p.dtype for p in parameters.values() if p.is_floating_point()), torch.float32)
    meta = {n: torch.empty(p.shape, dtype=dtype, device="meta", requires_grad=requires_grad) for n, p in parameters.items()}
    meta.update({n: torch.empty_like(b, device="meta") for n, b in vision.named_buffers()})
    probe = torch.zeros(probe_image_shape(vision_config), dtype=dtype, device="meta")
    kwargs = {"output_hidden_states": True, "return_dict": True}
    outputs = torch.func.functional_call(vision, meta, (probe,), kwargs, strict=False)
    return outputs, {n: meta[n] for n in parameters}


@functools.cache
def forward_parameters(module_class: type) -> frozenset[str]:
    """The names a module class's `forward` takes, read once per class (a forward path asks on every call)."""
    return frozenset(inspect.signature(module_class.forward).parameters)


def missing_encoder_inputs(vision: nn.Module) -> list[str]:
    """The inputs besides `pixel_values` the encoder's forward requires (e.g. Qwen2-VL's `grid_thw`)."""
    return [
        name
        for name, parameter in inspect.signature(vision.forward).parameters.items()
        if name != "pixel_values"
        and parameter.default is inspect.Parameter.empty
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def vision_level_widths(vision: nn.Module, config: HiveConfig) -> list[int]:
    """The width of each selected level, in `config.vision_layers` order: the encoder's `hidden_size` for a
    single-scale encoder, each stage's own width for a multi-scale one. Read from one forward on the meta device;
    where that cannot run (an encoder whose forward reads pixel values), the config's integer `hidden_size`."""
    vision_config = config.vision_config
    name = f"{type(vision).__name__} ({vision_config.model_type})"
    missing = missing_encoder_inputs(vision)
    if missing:
        raise ValueError(
            f"HIVE cannot use {name} as its encoder: its forward requires {missing}, and HIVE gives an encoder "
            "pixel_values alone."
        )
    try:
        with eval_mode(vision), torch.no_grad():
            hidden_states = encoder_outputs_on_meta(vision, vision_config)[0].hidden_states
    except Exception:
        width = getattr(vision_config, "hidden_size", None)
        if isinstance(width, int):
            return [width] * len(config.vision_layers)
        raise
    if hidden_states is None:
        raise ValueError(f"HIVE cannot use {name} as its encoder: it returns no hidden_states per layer or stage.")
    levels = {layer: hidden_states[layer + 1] for layer in config.vision_layers}
    shapes = {layer: tuple(states.shape) for layer, states in levels.items()}
    if any(states.ndim not in (3, 4) for states in levels.values()):
        raise ValueError(
            f"HIVE cannot use {name} as its encoder: its selected levels have shapes {shapes}, neither tokens "
            "(batch, tokens, width) nor feature maps (batch, channels, height, width)."
        )
    return [as_tokens(states).shape[-1] for states in levels.values()]


def load_vision_backbone(source: str, torch_dtype=None) -> tuple[nn.Module, list[str]]:
    """The encoder in `source` (a Hub id or folder) and the names of its weights the checkpoint lacks.

    `source` may hold an encoder alone (ViT, Swin, ...), or a model with a `vision_config`: a dual encoder (CLIP,
    SigLIP) or a full VLM (InternVL, Idefics3, SmolVLM, ...). The latter is loaded whole, once, and its vision tower
    is found by its weight names: the one submodule whose weights carry every name of the encoder class that
    `vision_config` maps to. That costs the VLM's memory for a moment; its LLM is dropped at once.
    """
    config = AutoConfig.from_pretrained(source)
    vision_config = getattr(config, "vision_config", None) or config
    vision_class = MODEL_MAPPING.get(type(vision_config), None)
    if vision_class is None:
        raise ValueError(
            f"HIVE cannot use {source!r} as its encoder: transformers has no model class for its vision config "
            f"{type(vision_config).__name__} (AutoModel does not build it)."
        )
    if vision_config is config:
        vision, info = vision_class.from_pretrained(source, dtype=torch_dtype, output_loading_info=True)
        return vision, sorted(info["missing_keys"])
    whole = AutoModel.from_pretrained(source, dtype=torch_dtype)
    weights = whole.state_dict()
    vision = vision_class(vision_config)
    names = list(vision.state_dict())
    prefixes = ["", *(f"{name}." for name, _ in whole.named_modules() if name)]
    prefix = max(prefixes, key=lambda prefix: sum(prefix + name in weights for name in names))
    found = [name for name in names if prefix + name in weights]
    if not found:
        raise ValueError(
            f"{source!r} ({type(whole).__name__}) holds no {vision_class.__name__} weights under any prefix; save its vision "
            "tower alone with save_pretrained and pass that folder."
        )
    logger.info(f"HIVE takes the {vision_class.__name__} of {source!r} from its weights under {prefix or 'the root'!r}.")
    vision.load_state_dict({name: weights[prefix + name] for name in found}, strict=False)
    if torch_dtype is not None:
        vision = vision.to(torch_dtype)
    return vision, sorted(name for name in names if prefix + name not in weights)


def load_text_backbone(source: str, torch_dtype=None) -> nn.Module:
    """The causal LLM of a Hub id or folder, refused when it lacks weights or has a biased output layer (HIVE's head
    has no bias, so it could not reproduce the LLM's logits)."""
    text, info = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"Backbone {source!r} lacks weights for {sorted(info['missing_keys'])[:10]}; is it the right checkpoint?")
    if getattr(text.get_output_embeddings(), "bias", None) is not None:
        raise ValueError(
            f"HIVE cannot reproduce the logits of {source!r} ({type(text).__name__}, {text.config.model_type}): its output "
            "layer has a bias, and HIVE's head has none."
        )
    return text


def build_from_backbones(model_class: type, vision_model: str, text_model: str, torch_dtype=None, **config_kwargs):
    """`HiveForConditionalGeneration.from_backbones`: a new HIVE model of `model_class` around the two backbones'
    weights (the encoder's, the LLM's and its head), its blocks and projectors freshly initialised."""
    vision, missing = load_vision_backbone(vision_model, torch_dtype)
    text = load_text_backbone(text_model, torch_dtype)
    head = text.get_output_embeddings()
    config = HiveConfig(vision_config=vision.config.to_dict(), text_config=text.config.to_dict(), **config_kwargs)
    model = model_class(config)
    # Only the weights HIVE uses are required: a checkpoint without a pooler (MAE/DINO-style, or a classifier's
    # encoder) is fine, one without embeddings or a connected layer is not.
    unused = set(model.model.unused_vision_parameter_names or [])
    if [key for key in missing if key not in unused]:
        raise ValueError(
            f"Backbone {vision_model!r} lacks weights HIVE uses: {[k for k in missing if k not in unused][:10]}; is it the right checkpoint?"
        )
    if missing:
        logger.info(f"Backbone {vision_model!r} has no weights for {missing}; HIVE does not use them (they stay frozen).")
    model.model.vision_model.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(getattr(text, base_model_name(text, type(model.model.language_model))).state_dict())
    model.lm_head.load_state_dict(head.state_dict())
    model.tie_weights()
    if config.cross_attention_mode == "shared_softmax":
        model.model.copy_llm_key_value_projections()
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model
