"""What HIVE measures of its backbones when a model is built, and the refusals that follow from it.

Each measurement runs the encoder or the LLM once on a probe input: which encoder weights the connected layers use,
whether the encoder's levels are the tokens HIVE reads and deterministic, whether every connected LLM layer receives
the vision context (and, in shared_softmax mode, how the LLM rotates its keys), and how the LLM's causal-LM class
makes its logits. The results go into the config (`backbone_inspection`, `logits_by_causal_lm`), keyed by a
fingerprint of everything they depend on (the backbones' configs, the connections, the fusion and the running
transformers), so that loading a saved folder does not run them again; a folder whose fingerprint differs (another
transformers, an edited config) is inspected anew.
"""

import hashlib
import json
import math

import torch
import transformers
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging

from .backbones_hive import (
    HiveComputedBaseModel,
    HiveScaledHead,
    base_model_name,
    decoder_layers,
    encoder_outputs_on_meta,
    eval_mode,
    probe_image_shape,
)
from .cache_hive import HiveVisionContext
from .shared_softmax_hive import probe_rotary


logger = logging.get_logger(__name__)


def parameters_reached(total: torch.Tensor, parameters) -> list[bool]:
    """Whether each parameter (or leaf tensor) gets a gradient from the scalar `total`: which weights a forward
    reaches. The one answer HIVE, its MIM stage and the studies use."""
    return [gradient is not None for gradient in torch.autograd.grad(total, list(parameters), allow_unused=True)]


def vision_parameters_in_use(model) -> list[nn.Parameter]:
    """The encoder parameters the connected vision layers depend on, found by an autograd probe.

    The probe runs on the meta device (no compute or memory whatever the encoder's size; the encoder may still be on
    meta), or, for an encoder whose forward needs real values (data-dependent control flow), on a zero image with the
    encoder's own weights.
    """
    config, vision = model.config, model.base_model.vision_model
    shape = probe_image_shape(config.vision_config)
    names, parameters = zip(*vision.named_parameters())
    dtype = next((p.dtype for p in parameters if p.is_floating_point()), torch.float32)

    def connected_total(outputs):
        return sum(outputs.hidden_states[layer + 1].float().sum() for layer in config.vision_layers)

    # eval: checkpointed layers recompute only in training, and would do so with the real weights. Gradients on, also
    # when the model is built under no_grad or inference_mode.
    with eval_mode(vision), torch.inference_mode(False), torch.enable_grad():
        try:
            outputs, meta = encoder_outputs_on_meta(vision, config.vision_config, requires_grad=True)
            reached = parameters_reached(connected_total(outputs), [meta[n] for n in names])
        except Exception:
            if any(p.is_meta for p in parameters):
                raise
            trainable = [p for p in parameters if p.is_floating_point()]
            flags = [p.requires_grad for p in trainable]
            try:
                for p in trainable:
                    p.requires_grad_(True)
                pixel_values = torch.zeros(shape, dtype=dtype, device=trainable[0].device)
                outputs = vision(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
                reached_trainable = parameters_reached(connected_total(outputs), trainable)
            finally:
                for p, flag in zip(trainable, flags):
                    p.requires_grad_(flag)
            in_use = {id(p) for p, r in zip(trainable, reached_trainable) if r}
            reached = [id(p) in in_use for p in parameters]
    return [p for p, r in zip(parameters, reached) if r]


def find_unused_vision_parameters(model) -> list[str] | None:
    """Names of the encoder weights no connected layer depends on (final norm, pooler, deeper layers); None, with a
    warning, for an encoder the probe cannot run."""
    try:
        in_use = {id(p) for p in vision_parameters_in_use(model)}
    except Exception as error:
        logger.warning(
            f"HIVE could not find which {type(model.base_model.vision_model).__name__} weights its connected layers use "
            f"({type(error).__name__}: {error}); the encoder's final norm or pooler, if any, stays trainable without "
            "ever getting a gradient (DDP then needs find_unused_parameters=True)."
        )
        return None
    return [name for name, p in model.base_model.vision_model.named_parameters() if id(p) not in in_use]


def check_encoder_output(hive) -> None:
    """Refuses an encoder HIVE cannot read exactly: one whose selected layers are not `(B, N, hidden_size)` tokens
    (multi-stage encoders such as Swin change width per stage), or whose forward is random in eval mode (ViT-MAE masks
    and shuffles patches in every call: the same image would give other answers each time). Two forwards of one image
    through `hive` (a `HiveModel`)."""
    vision, config = hive.vision_model, hive.config
    weight = next(vision.parameters())
    shape = probe_image_shape(config.vision_config)
    # A varied image: on a constant one, patches are interchangeable and a random choice among them goes unseen.
    probe = torch.linspace(-1, 1, math.prod(shape), dtype=weight.dtype, device=weight.device).reshape(shape)
    with eval_mode(vision), torch.no_grad():
        first, second = (hive.encode_image(probe)[1] for _ in range(2))
    widths = [projector.layer_norm.normalized_shape[0] for projector in hive.multi_modal_projectors]
    shapes = {layer: tuple(states.shape) for layer, states in zip(config.vision_layers, first)}
    if [shape[-1] if len(shape) == 3 else None for shape in shapes.values()] != widths:
        raise ValueError(
            f"HIVE cannot use {type(vision).__name__} ({config.vision_config.model_type}) as its encoder: its selected "
            f"levels have shapes {shapes} on a real image, but their widths were {widths} when the model was built."
        )
    if not all(torch.equal(a, b) for a, b in zip(first, second)):
        raise ValueError(
            f"HIVE cannot use {type(vision).__name__} ({config.vision_config.model_type}) as its encoder: its forward "
            "is random in eval mode (e.g. random patch masking), so the same image would give different answers. Load "
            "the checkpoint's weights into a deterministic encoder of the same architecture instead (e.g. ViTModel for "
            "a ViT-MAE checkpoint)."
        )


def check_cross_attention_is_reached(hive) -> tuple[bool, bool] | None:
    """Refuses an LLM whose decoder layers never receive HIVE's vision context, with which the image would be silently
    ignored. One forward of two tokens through the LLM. In shared_softmax mode, also refuses an attention that drops
    the image keys or a rotary embedding image keys cannot follow, and returns how the LLM rotates its keys
    (`(halves_layout, neighbours)`, see `probe_rotary`; None without rotary positions)."""
    config, language_model = hive.config, hive.language_model
    embeddings = language_model.get_input_embeddings()
    context = HiveVisionContext(key_values=[], image_mask=None, reached={})
    reason = None
    try:
        # With gradients (a graph of two tokens, dropped at once): bitsandbytes' CPU backend turns a 4-bit layer into an
        # inference-only layout at its first eval forward without them, after which a layer with a bias (Qwen2's
        # q/k/v) can no longer train (QLoRA).
        with torch.enable_grad():
            input_ids = torch.ones(1, 2, dtype=torch.long, device=embeddings.weight.device)
            language_model(input_ids=input_ids, hive_vision_context=context, use_cache=False)
    except TypeError as error:  # a forward without **kwargs
        reason = f"its forward does not take extra keyword arguments ({error})"
    missing = [pair[1] for i, pair in enumerate(config.cross_attention_layers) if i not in context.reached]
    if missing and reason is None:
        reason = (
            f"its base model calls decoder layer(s) {missing} without the keyword arguments given to its forward, so "
            "the image would be silently ignored"
        )
    width = config.text_config.hidden_size
    shapes = {config.cross_attention_layers[i][1]: shape for i, shape in context.reached.items()}
    if reason is None and any(len(shape) != 3 or shape[-1] != width for shape in shapes.values()):
        reason = (
            f"its decoder layers take hidden states of shapes {shapes} (by layer), not (batch, tokens, {width}), so a "
            "block cannot add to them"
        )
    if reason is not None:
        raise ValueError(
            f"HIVE cannot insert cross-attention into {type(language_model).__name__} ({config.text_config.model_type}): "
            f"{reason}. HIVE needs a decoder-only LLM whose base model passes its **kwargs to every decoder layer, with "
            "hidden states of (batch, tokens, width) (Llama, Qwen2, Mistral, Gemma2, GPT-2, ...)."
        )
    if config.cross_attention_mode != "shared_softmax":
        return None
    text_layers = [pair[1] for pair in config.cross_attention_layers]
    unread = [layer for i, layer in enumerate(text_layers) if i not in context.consumed]
    if unread:
        reason = (
            f"the attention of decoder layer(s) {unread} does not pass its keyword arguments to transformers' attention "
            "function, so the image keys would be silently ignored"
        )
    layers = decoder_layers(language_model, config.text_config.num_hidden_layers)
    style, rotary_reason = probe_rotary(language_model, text_layers, layers)
    reason = reason or rotary_reason
    if reason is not None:
        raise ValueError(
            f"HIVE's shared_softmax mode cannot join the image to {type(language_model).__name__} "
            f"({config.text_config.model_type}): {reason}. Use cross_attention_mode='gated' for this LLM."
        )
    return style


def causal_lm_shell(model) -> tuple[nn.Module, str]:
    """The LLM's own causal-LM class, built once on the meta device and never registered as a submodule, with the name
    of the attribute that holds its base model. `run_causal_lm` runs its forward around HIVE's own modules."""
    if "_causal_lm_shell" not in model.__dict__:
        text_config = model.config.text_config
        causal_lm_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(text_config), None)
        if causal_lm_class is None:
            raise ValueError(
                f"HIVE cannot use a {text_config.model_type} LLM: transformers has no causal-LM class for "
                f"{type(text_config).__name__}."
            )
        with torch.device("meta"):
            shell = causal_lm_class(text_config)
        model.__dict__["_causal_lm_shell"] = (shell, base_model_name(shell, type(model.model.language_model)))
    return model.__dict__["_causal_lm_shell"]


def run_causal_lm(model, base_model: nn.Module, head: nn.Module, **inputs) -> torch.Tensor:
    """The logits of the LLM's own causal-LM forward, run around `base_model` and `head`."""
    shell, base_name = causal_lm_shell(model)
    setattr(shell, base_name, base_model)
    shell.set_output_embeddings(head)
    try:
        return shell(**inputs, use_cache=False).logits
    finally:
        setattr(shell, base_name, None)  # the shell keeps no reference to the hidden states or the LLM


def logits_by_causal_lm(model) -> bool | None:
    """How the LLM's causal-LM forward computes its logits from its base model's last hidden state, refusing an LLM
    whose logits HIVE cannot reproduce. One forward of two tokens through the LLM's own causal-LM class (built on the
    meta device around HIVE's LLM and head), with the head scaled to logits near 100, where soft-capping shows. Equal
    to the head alone: False (`llm_logits` applies the head). Equal to that forward run on the last hidden state: True
    (`llm_logits` runs it). Neither: refused. None while the weights are on the meta device and not dispatched
    (offloaded weights are measured through their accelerate hooks)."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)  # accelerate's, on weights offloaded to the CPU or disk
    if embeddings.weight.is_meta and hook is None:
        return None
    family = model.config.text_config.model_type
    device = getattr(hook, "execution_device", None) or embeddings.weight.device
    input_ids = torch.tensor([[1, 2]], device=device) % model.config.text_config.vocab_size
    with eval_mode(model), torch.no_grad():
        try:
            hidden_states = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
            head = HiveScaledHead(model.lm_head, 100.0 / model.lm_head(hidden_states).abs().max().clamp(min=1e-6).item())
            llm_logits = run_causal_lm(model, model.model.language_model, head, input_ids=input_ids).float()
        except Exception as error:
            raise ValueError(
                f"HIVE cannot check that its logits are those of the {family} causal LM: its forward failed around HIVE's "
                f"LLM and head ({type(error).__name__}: {error})."
            ) from error
        tolerance = 1e-3 * 100  # at logits near 100
        difference = (head(hidden_states).float() - llm_logits).abs().max().item()
        by_causal_lm, error = difference > tolerance, None
        if by_causal_lm:  # soft-capping or scaling after the head: does its forward on the last hidden state give it?
            try:
                logits = run_causal_lm(model, HiveComputedBaseModel(hidden_states), head).float()
                difference = (logits - llm_logits).abs().max().item()
            except Exception as failure:
                error, difference = failure, float("inf")
    if by_causal_lm and difference > tolerance:
        raise ValueError(
            f"HIVE cannot reproduce the logits of {type(causal_lm_shell(model)[0]).__name__} ({family}): its causal-LM "
            "forward computes them from more than its base model's last hidden state (at logits near 100, HIVE's differ "
            f"by {difference:.3g}), and HIVE would silently drop that part."
        ) from error
    return by_causal_lm


def recorded_logits_by_causal_lm(model, required: bool = False) -> bool | None:
    """`config.logits_by_causal_lm`, measured (`logits_by_causal_lm`) and recorded first when the config has none: a
    folder saved before HIVE recorded it, or loaded with its weights on the meta device. `required`: refuse when it
    still cannot be measured (the weights are not loaded)."""
    if model.config.logits_by_causal_lm is None:
        model.config.logits_by_causal_lm = logits_by_causal_lm(model)
    if required and model.config.logits_by_causal_lm is None:
        raise ValueError(
            "HIVE does not know how this LLM computes its logits: the folder's config has no `logits_by_causal_lm` "
            "(saved before HIVE recorded it) and the weights are not loaded, so it cannot be measured. Load the "
            "folder once without device_map offloading or quantization and save it again."
        )
    return model.config.logits_by_causal_lm


def backbone_fingerprint(config) -> str:
    """What the inspection's results depend on: the backbones' configs, the connections, the fusion and the running
    transformers (their code decides how the layers are called). Names and dtypes of a checkpoint are left out."""
    volatile = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"}

    def stable(sub_config) -> dict:
        return {k: v for k, v in sub_config.to_dict().items() if k not in volatile and not k.startswith("_")}

    parts = {
        "vision_config": stable(config.vision_config),
        "text_config": stable(config.text_config),
        "cross_attention_layers": config.cross_attention_layers,
        "vision_layers": config.vision_layers,
        "cross_attention_mode": config.cross_attention_mode,
        "hierarchy_mode": config.hierarchy_mode,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inspect_backbones(hive) -> None:
    """Runs the build-time checks on `hive` (a `HiveModel`) and keeps their results on it and in its config, or takes
    them from the config when its record has this model's fingerprint. With the weights still on the meta device
    (`from_pretrained` builds there first), only the weights the connected layers use are found; `from_pretrained`
    calls this again once the weights are loaded."""
    config = hive.config
    record, fingerprint = config.backbone_inspection, backbone_fingerprint(config)
    if record and record.get("fingerprint") == fingerprint:
        hive.unused_vision_parameter_names = record["unused_vision_parameters"]
        hive.rotary_style = tuple(record["rotary_style"]) if record["rotary_style"] is not None else None
        return
    if hive.unused_vision_parameter_names is None:
        hive.unused_vision_parameter_names = find_unused_vision_parameters(hive)
    if next(hive.vision_model.parameters()).is_meta or hive.language_model.get_input_embeddings().weight.is_meta:
        return
    check_encoder_output(hive)
    hive.rotary_style = check_cross_attention_is_reached(hive)
    if hive.unused_vision_parameter_names is not None:  # a probe that could not run is tried again at the next load
        config.backbone_inspection = {
            "fingerprint": fingerprint,
            "unused_vision_parameters": list(hive.unused_vision_parameter_names),
            "rotary_style": list(hive.rotary_style) if hive.rotary_style is not None else None,
        }
