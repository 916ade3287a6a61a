"""HIVE: a vision encoder feeding a causal LLM through gated cross-attention at several layer pairs.

The LLM is left unmodified: each cross-attention block runs as a forward pre-hook on its LLM decoder layer, and
reads the image keys/values from a `HiveVisionContext` that travels to every decoder layer as a keyword argument
(transformers forwards the LM's `**kwargs` to its decoder layers). Parameter names of the encoder and the LLM are
therefore exactly those of their own checkpoints, under `model.vision_model.` and `model.language_model.`.
"""

import os
import shutil
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.masking_utils import create_masks_for_generate
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple

from .backbones_hive import (
    HiveComputedBaseModel,
    as_tokens,
    causal_lm_head_plan,
    decoder_layers,
    forward_parameters,
    build_from_backbones,
    in_order_noise,
    vision_level_widths,
)
from .cache_hive import HiveCrossAttentionCacheLayer, HiveVisionContext, cache_image_key_values, cached_image_key_values
from .compatibility_hive import CACHE_NAME, deprecate_past_key_values, generate_cache_kwargs, resolve_cache
from .configuration_hive import HiveConfig
from .cross_attention_hive import HiveCrossAttentionLayer
from .inspection_hive import (
    inspect_backbones,
    logits_by_causal_lm,
    recorded_logits_by_causal_lm,
    run_causal_lm,
    vision_parameters_in_use,
)
from .layers_hive import HiveMultiModalProjector
from .outputs_hive import HiveCausalLMOutputWithPast, HiveModelOutputWithPast, image_features_output
from .pipeline_hive import HIVE_CUSTOM_PIPELINES
from .shared_softmax_hive import (
    HiveSharedSoftmaxLayer,
    check_image_keys_consumed,
    check_llm_attention_request,
    copy_llm_key_value_projections,
    image_rotary_embeddings,
    join_llm_attention,
    layer_image_key_values,
    rotary_layer_type,
)
from .trainable_hive import component_parameters, freeze_unused_vision_parameters, set_trainable
from .validation_hive import check_hive_inputs, check_input_values, check_label_values, check_labels


logger = logging.get_logger(__name__)


# Every Auto class a saved HIVE folder answers to with `trust_remote_code=True`. `AutoModel` gives the generating class,
# as remote-code VLMs (InternVL, MiniCPM-V) do: tools that know no HIVE class (lmms-eval's generic `huggingface` model)
# load an unknown model type with `AutoModel` and call `generate`. The bare `HiveModel` is its `.model`.
HIVE_AUTO_MAP = {
    "AutoConfig": "configuration_hive.HiveConfig",
    "AutoModel": "modeling_hive.HiveForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_hive.HiveForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hive.HiveForConditionalGeneration",
}


class HivePreTrainedModel(PreTrainedModel):
    config: HiveConfig
    config_class = HiveConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["HiveCrossAttentionLayer", "HiveSharedSoftmaxLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    # HIVE's own modules and the vision tower are never quantized (bitsandbytes and the other quantizers skip the modules
    # listed here), and stay in float32 when the rest loads in float16: only the LLM is quantized, as QLoRA recipes for
    # VLMs do. Patterns match from the start of a module's name in both classes (`model.` prefixed or not).
    _keep_in_fp32_modules = [
        r"(model\.)?vision_model",
        r"(model\.)?multi_modal_projectors",
        r"(model\.)?cross_attention_layers",
    ]  # `all_levels` mode adds its level embeddings (HiveModel.__init__)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: HIVE's `_init_weights` writes through `transformers.initialization`, which leaves loaded tensors
        alone, as transformers' own models do. Loading then runs each backbone's own init in full, as loading the
        backbone alone would: custom code gets a shortcut that skips a module whose own tensors are all loaded, and
        with it a base model's init that fills its layers' non-persistent buffers (Falcon-H1's `mup_vector`, whose
        absence makes every logit NaN)."""
        return False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but weights are only ever read from safetensors (no pickle path); the
        backbones are inspected as when the model was built, unless the config's record fits them (`inspection_hive`),
        and the encoder weights no connected layer uses are frozen."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("HIVE loads weights from safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        try:
            model = super().from_pretrained(*args, **kwargs)
        except Exception as error:
            # Matched by name: the remote-code files import torch and transformers only, not safetensors.
            if type(error).__name__ != "SafetensorError":
                raise
            source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise ValueError(
                f"{source}: a safetensors weights file is corrupt or truncated ({error}); save or download the checkpoint again."
            ) from error
        loaded = model[0] if isinstance(model, tuple) else model
        loaded.check_backbones()  # __init__ ran on the meta device, where the checks cannot run
        freeze_unused_vision_parameters(loaded)  # loading materialises fresh parameters, losing __init__'s flags
        return model

    @classmethod
    def is_remote_code(cls) -> bool:
        """As transformers', for HIVE's own classes: a subclass derived at run time outside this file (FSDP2's wrapper
        class) would otherwise ship its own module's code as the folder's (see `save_pretrained`)."""
        return super().is_remote_code() and cls.__module__ == __name__

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """As `PreTrainedModel.set_attn_implementation`; in shared_softmax mode the LLM then runs under `hive_sdpa`
        again (its image keys join its attention through it), and anything but sdpa for the LLM is refused."""
        if self.config.cross_attention_mode == "shared_softmax":
            check_llm_attention_request(attn_implementation)
        result = super().set_attn_implementation(attn_implementation, *args, **kwargs)
        if self.config.cross_attention_mode == "shared_softmax":
            join_llm_attention(self.base_model.language_model, self.config)  # as `hive_sdpa` again
        return result

    def check_backbones(self) -> None:
        """The build-time checks that refuse a backbone HIVE cannot use exactly, and the measurements HIVE keeps in its
        config (see `inspection_hive`)."""
        inspect_backbones(self.base_model)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained` (safetensors), with a config whose `auto_map` covers every Auto class."""
        if kwargs.get("safe_serialization") is False:
            raise ValueError("HIVE writes weights as safetensors only; drop safe_serialization=False.")
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **HIVE_AUTO_MAP}
        self.config.custom_pipelines = {**(getattr(self.config, "custom_pipelines", None) or {}), **HIVE_CUSTOM_PIPELINES}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if type(self).__module__ != __name__ and kwargs.get("is_main_process", True):
            # A class another library derived at run time (FSDP2's `FSDPHiveForConditionalGeneration`, in torch's
            # module) has no code to ship (`is_remote_code`): the folder gets HIVE's, as from the class itself.
            for code_file in [__file__, *get_relative_import_files(__file__)]:
                shutil.copyfile(code_file, os.path.join(save_directory, os.path.basename(code_file)))
        return result

    def component_parameters(self) -> dict[str, list[nn.Parameter]]:
        """HIVE's four components and their parameters: vision, projector, cross_attention, llm (head included)."""
        return component_parameters(self)

    def vision_parameters_in_use(self) -> list[nn.Parameter]:
        """The encoder parameters the connected vision layers depend on, found by an autograd probe."""
        return vision_parameters_in_use(self)

    def set_trainable(self, vision=None, projector=None, cross_attention=None, llm=None) -> dict[str, dict[str, int]]:
        """Freezes (False) or unfreezes (True) whole components; None leaves one as it is. Logs and returns the counts.

        Args:
            vision, projector, cross_attention, llm (`bool`, *optional*): whether that component trains. `vision=True`
                unfreezes only the encoder weights the connected layers depend on.

        Returns:
            `{component: {"trainable": n, "total": m}}` in parameters (elements), plus a `"total"` row.

        Example:
            ```python
            >>> counts = model.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)  # stage 2
            >>> counts["llm"]["trainable"]
            0
            ```
        """
        return set_trainable(self, vision=vision, projector=projector, cross_attention=cross_attention, llm=llm)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HiveCrossAttentionLayer):
            init.constant_(module.cross_attn_attn_gate, self.config.gate_init)
            init.constant_(module.cross_attn_mlp_gate, self.config.gate_init)
        elif isinstance(module, HiveModel) and module.level_embeddings is not None:
            init.normal_(module.level_embeddings, std=0.02)
        elif isinstance(module, HiveMultiModalProjector) and self.config.shared_softmax_norm == "queries_and_keys":
            for linear in (module.linear_1, module.linear_2):  # the authors' projector init (after its children's)
                init.xavier_uniform_(linear.weight)
                init.zeros_(linear.bias)


class HiveModel(HivePreTrainedModel):
    """The vision encoder, the per-level projectors, the cross-attention blocks and the LLM's base model."""

    def __init__(self, config: HiveConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.language_model = AutoModel.from_config(config.text_config)
        # Read once here, not in every forward (where torch.compile would trace `inspect`).
        self.encoder_takes_noise = "noise" in forward_parameters(type(self.vision_model))
        # shared_softmax: the layer type whose rotary embedding each block's image keys use (Gemma3), or None.
        self.rotary_layer_types = [rotary_layer_type(self.language_model, layer) for _, layer in config.cross_attention_layers]
        self.multi_modal_projectors = nn.ModuleList(
            HiveMultiModalProjector(config, width) for width in vision_level_widths(self.vision_model, config)
        )
        layers = decoder_layers(self.language_model, config.text_config.num_hidden_layers)
        self.rotary_style = None  # shared_softmax: how the LLM rotates its keys, found by inspect_backbones
        if config.cross_attention_mode == "shared_softmax":
            join_llm_attention(self.language_model, config)  # the LLM's attention runs as `hive_sdpa`
            text = config.text_config
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            self.cross_attention_layers = nn.ModuleList(
                HiveSharedSoftmaxLayer(layers[text_layer], head_dim, config.rms_norm_eps, config.shared_softmax_norm)
                for _, text_layer in config.cross_attention_layers
            )
        else:
            self.cross_attention_layers = nn.ModuleList(HiveCrossAttentionLayer(config) for _ in config.cross_attention_layers)
        if config.hierarchy_mode == "all_levels":
            self.level_embeddings = nn.Parameter(torch.zeros(len(config.vision_layers), config.text_config.hidden_size))
            self._keep_in_fp32_modules = [*self._keep_in_fp32_modules, r"(model\.)?level_embeddings"]
        else:
            self.level_embeddings = None
        self._no_split_modules = sorted(
            {type(self.cross_attention_layers[0]).__name__}
            | set(getattr(self.vision_model, "_no_split_modules", None) or [])
            | set(getattr(self.language_model, "_no_split_modules", None) or [])
        )
        for index, (_, text_layer) in enumerate(config.cross_attention_layers):
            layers[text_layer].register_forward_pre_hook(partial(self._cross_attention_hook, index), with_kwargs=True)
        self.post_init()
        if config.cross_attention_mode == "shared_softmax" and not self.language_model.get_input_embeddings().weight.is_meta:
            self.copy_llm_key_value_projections()
        self.unused_vision_parameter_names = None  # what inspect_backbones finds (or reads from the config)
        inspect_backbones(self)
        freeze_unused_vision_parameters(self)

    def copy_llm_key_value_projections(self) -> None:
        """shared_softmax mode: every block's input norm and image k/v projections become those of its LLM layer."""
        copy_llm_key_value_projections(self.cross_attention_layers, self.language_model, self.config)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_decoder(self):
        return self.language_model

    def _cross_attention_hook(self, index, module, args, kwargs):
        """Runs cross-attention block `index` on the hidden states entering its LLM decoder layer."""
        context = kwargs.get("hive_vision_context")
        if context is None:
            return None
        hidden_states = args[0] if args else kwargs["hidden_states"]
        probe = context.reached is not None
        if probe:
            context.reached[index] = tuple(hidden_states.shape)
        if self.config.cross_attention_mode == "shared_softmax":
            # Handed to this layer's attention function (see shared_softmax_hive), which joins them to the layer's keys.
            image = layer_image_key_values(module, index, self.cross_attention_layers[index], context, hidden_states.dtype)
            return args, {**kwargs, "hive_image_key_values": image}
        if probe:
            return None
        block = self.cross_attention_layers[index]
        key_states, value_states = context.key_values[index]
        output_attentions = context.cross_attentions is not None
        # The block keeps its own dtype (float32 beside a float16 or quantized LLM, see `_keep_in_fp32_modules`): it
        # runs in it, and hands the layer back hidden states in the layer's dtype.
        new_hidden_states, attn_weights = block(
            hidden_states.to(block.input_layernorm.weight.dtype), key_states, value_states, context.image_mask, output_attentions=output_attentions
        )
        new_hidden_states = new_hidden_states.to(hidden_states.dtype)
        if output_attentions:
            context.cross_attentions[index] = attn_weights
        if args:
            return (new_hidden_states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new_hidden_states}

    def encode_image(self, pixel_values: torch.Tensor, output_attentions=None, output_hidden_states=None, **kwargs):
        """Runs the encoder once: its output, and one `(B, num_tokens, level_width)` tensor per selected layer or stage
        (a stage's feature map flattened to tokens).
        `kwargs` go to the encoder (e.g. `interpolate_pos_encoding`)."""
        if output_attentions is not None:  # None would switch attentions off even where the encoder's config asks for them
            kwargs["output_attentions"] = output_attentions
        if self.encoder_takes_noise and kwargs.get("noise") is None:  # an MAE-style encoder: every patch, in order
            kwargs["noise"] = in_order_noise(pixel_values, self.config.vision_config.patch_size)
        outputs = self.vision_model(
            pixel_values=pixel_values.to(self.vision_model.dtype), output_hidden_states=True, return_dict=True, **kwargs
        )
        # hidden_states[0] is the embedding output, hidden_states[i + 1] the output of encoder layer i.
        levels = tuple(as_tokens(outputs.hidden_states[layer + 1]) for layer in self.config.vision_layers)
        if not (output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states):
            outputs.hidden_states = None
        return outputs, levels

    def project_levels(self, vision_hidden_states: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Each level through its projector into the LLM width; in `all_levels` mode tagged by its level embedding."""
        # Read from the LayerNorm, which no quantizer replaces (a quantized Linear's weight holds integers).
        dtype = self.multi_modal_projectors[0].layer_norm.weight.dtype
        levels = [projector(states.to(dtype)) for projector, states in zip(self.multi_modal_projectors, vision_hidden_states)]
        if self.level_embeddings is not None:
            levels = [states + self.level_embeddings[i] for i, states in enumerate(levels)]
        return levels

    def get_cross_attention_key_values(self, image_levels: list[torch.Tensor]) -> list:
        """Every block's image keys/values from the levels `project_levels` returns, in the LLM width (done once per
        image)."""
        level_index = {layer: i for i, layer in enumerate(self.config.vision_layers)}
        all_levels = torch.cat(image_levels, dim=1) if self.level_embeddings is not None else None
        rotary = getattr(self.language_model, "rotary_emb", None)  # shared_softmax: the image keys' 2-D positions
        positions = {}  # (level sizes, layer type) -> rotary, computed once per image batch
        key_values = []
        for index, (block, (vision_layer, _)) in enumerate(zip(self.cross_attention_layers, self.config.cross_attention_layers)):
            image_states = all_levels if all_levels is not None else image_levels[level_index[vision_layer]]
            if self.config.cross_attention_mode != "shared_softmax" or rotary is None:
                key_values.append(block(image_states))
                continue
            if self.rotary_style is None:  # built on the meta device and loaded by hand: the build-time checks, now
                inspect_backbones(self)
            halves_layout, neighbours = self.rotary_style
            sizes = tuple(level.shape[1] for level in image_levels) if all_levels is not None else (image_states.shape[1],)
            key = (sizes, self.rotary_layer_types[index])
            if key not in positions:
                positions[key] = (*image_rotary_embeddings(rotary, list(sizes), image_states, key[1], halves_layout), neighbours)
            key_values.append(block(image_states, positions[key]))
        return key_values

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, output_attentions: bool | None = None, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Runs the encoder and the projectors once.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`): the images.
            output_attentions, output_hidden_states (`bool`, *optional*): also return the encoder's attentions and
                all its hidden states (`hidden_states[i + 1]` is encoder layer i's output).
            **kwargs: passed to the encoder (e.g. `interpolate_pos_encoding`).

        Returns:
            `BaseModelOutputWithPooling`: `last_hidden_state` is the encoder's last layer, and `pooler_output` the
            image tokens the cross-attention blocks read, `(batch_size, num_levels * num_patches, text_hidden_size)`:
            every selected level projected into the LLM width, concatenated in `config.vision_layers` order.

        Example:
            ```python
            >>> features = model.model.get_image_features(pixel_values)
            >>> features.pooler_output.shape  # (batch_size, num_levels * num_patches, text_hidden_size)
            ```
        """
        encoder_outputs, levels = self.encode_image(pixel_values, output_attentions, output_hidden_states, **kwargs)
        return image_features_output(encoder_outputs, self.project_levels(levels))

    @can_return_tuple
    @deprecate_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_vision_features: bool = False,
        output_cross_attentions: bool = False,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HiveModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids; images are not tokens in HIVE, so no image placeholder is needed.
            pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*):
                One image per sample. `None` runs text-only, or reuses the image keys/values cached in `cache`.
            image_mask (`torch.BoolTensor` of shape `(batch_size,)`, *optional*):
                Which samples have a real image; the others skip every cross-attention block. Defaults to all.
            cache (`Cache`, *optional*):
                The generation cache, as returned by a previous call. `past_key_values` is accepted too: silently
                before transformers 5.25, with transformers' own FutureWarning from 5.25 on (as its models do). The
                output names the cache as the running transformers does.
            attention_mask, position_ids, inputs_embeds, use_cache:
                As for the LLM.
            output_vision_features (`bool`): also return the selected encoder layers' hidden states.
            output_cross_attentions (`bool`): also return each block's attention weights over the image tokens.

        Example:
            ```python
            >>> outputs = model.model(input_ids=input_ids, pixel_values=pixel_values)
            >>> outputs.last_hidden_state.shape  # (batch_size, sequence_length, hidden_size)
            ```
        """
        cache = resolve_cache(cache, past_key_values)
        vocab_size = self.language_model.get_input_embeddings().num_embeddings
        image_mask = check_hive_inputs(
            self.config, vocab_size, input_ids, inputs_embeds, attention_mask, pixel_values, image_mask, cache is not None,
            output_cross_attentions,
        )
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        if position_ids is None and isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            # Positions count real tokens only, so left-padded samples match their unpadded selves.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]

        vision_hidden_states = image_outputs = key_values = None
        num_text_layers = self.config.text_config.num_hidden_layers
        if pixel_values is not None:
            encoder_outputs, vision_hidden_states = self.encode_image(
                pixel_values, kwargs.get("output_attentions"), kwargs.get("output_hidden_states")
            )
            image_levels = self.project_levels(vision_hidden_states)
            key_values = self.get_cross_attention_key_values(image_levels)
            image_outputs = image_features_output(encoder_outputs, image_levels)
        elif cache is not None:  # a decode step: the image keys/values written at prefill, if any
            key_values, image_mask = cached_image_key_values(cache, num_text_layers, image_mask)

        context = None
        if key_values is not None:
            context = HiveVisionContext(key_values, image_mask, {} if output_cross_attentions else None)
        outputs = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            hive_vision_context=context,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        if self.config.cross_attention_mode == "shared_softmax" and context is not None:
            check_image_keys_consumed(context, self.language_model)
        cache = getattr(outputs, CACHE_NAME, None)  # an LLM that keeps its state inside (RecurrentGemma) returns none
        if pixel_values is not None and cache is not None:
            # The LLM's own layers exist now; the image keys/values go after them, one layer per block.
            cache_image_key_values(cache, num_text_layers, key_values, image_mask)

        cross_attentions = None
        if output_cross_attentions and context is not None:
            cross_attentions = tuple(context.cross_attentions[i] for i in range(len(key_values)))
        return HiveModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: cache},
            hidden_states=outputs.hidden_states,
            attentions=getattr(outputs, "attentions", None),  # state-space LLMs have none
            image_outputs=image_outputs,
            vision_hidden_states=vision_hidden_states if output_vision_features else None,
            cross_attentions=cross_attentions,
        )


def causal_lm_loss(logits: torch.Tensor, shift_labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of each position's logits against its (already shifted) target, over targets != -100; 0.0 (never
    NaN) when every target is -100."""
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift_labels, ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (shift_labels != -100).sum()
    num_items_in_batch = torch.as_tensor(num_items_in_batch, device=loss_sum.device)
    return loss_sum / num_items_in_batch.clamp(min=1)


class HiveForConditionalGeneration(HivePreTrainedModel, GenerationMixin):
    """HIVE with the LLM's language-modelling head: the class to train, generate with and save.

    Example:
        ```python
        >>> from modeling_hive import HiveForConditionalGeneration
        >>> model = HiveForConditionalGeneration.from_backbones("google/siglip-base-patch16-224", "Qwen/Qwen2-0.5B")
        >>> out = model.generate(**processor(images=image, text="What colour is the square?", return_tensors="pt"))
        ```
    """

    def __init__(self, config: HiveConfig):
        super().__init__(config)
        self.model = HiveModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        embeddings = self.model.language_model.get_input_embeddings()
        embeddings_name = next(name for name, module in self.model.language_model.named_modules() if module is embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embeddings_name}.weight"}
        self._no_split_modules = self.model._no_split_modules
        self.post_init()
        head_plan = causal_lm_head_plan(config.text_config, self._tp_plan)  # tensor parallelism, as the LLM's own head
        if head_plan is not None:
            self._tp_plan["lm_head"] = head_plan
        recorded_logits_by_causal_lm(self)

    def check_backbones(self) -> None:
        """As `HivePreTrainedModel.check_backbones`, and how the LLM makes its logits, for a folder saved before it was
        recorded in the config."""
        super().check_backbones()
        recorded_logits_by_causal_lm(self)

    def llm_logits(self, hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor = 0, head: nn.Module | None = None):
        """Next-token logits from the LLM's last hidden states, as the LLM's own causal-LM class computes them.

        For most LLMs that is the output layer (`lm_head`, or `head`) applied to the hidden states. An LLM whose
        causal-LM forward does more after its head (Gemma2's final soft-capping, Cohere's and Granite's scaling) gets
        that forward itself, run by its own code around a stand-in base model that returns `hidden_states`: no
        per-family rule is written here. Which of the two holds is measured once when the model is built
        (`inspection_hive.logits_by_causal_lm`) and recorded in `config.logits_by_causal_lm`."""
        head = head or self.lm_head
        if recorded_logits_by_causal_lm(self, required=True):
            return run_causal_lm(self, HiveComputedBaseModel(hidden_states), head, logits_to_keep=logits_to_keep)
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return head(hidden_states[:, slice_indices, :])

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model.get_decoder()

    @property
    def vision_model(self):
        return self.model.vision_model

    @property
    def language_model(self):
        return self.model.language_model

    @classmethod
    def from_backbones(cls, vision_model: str, text_model: str, torch_dtype=None, **config_kwargs):
        """Builds a HIVE model around a pretrained encoder and a pretrained causal LLM (Hub ids or local folders).

        The cross-attention blocks and projectors are freshly initialised (gates at `gate_init`); the backbones' weights
        are loaded unchanged. A dual-encoder checkpoint (CLIP, SigLIP) or a full VLM checkpoint (InternVL, Idefics3,
        SmolVLM, ...) contributes its vision tower (see `load_vision_backbone`).

        Args:
            vision_model (`str`): Hub id or folder of the vision encoder.
            text_model (`str`): Hub id or folder of the causal LLM.
            torch_dtype: dtype to load both backbones in.
            **config_kwargs: `HiveConfig` fields such as `cross_attention_layers` or `hierarchy_mode`.

        Example:
            ```python
            >>> model = HiveForConditionalGeneration.from_backbones("google/siglip-base-patch16-224", "Qwen/Qwen2-0.5B",
            ...     cross_attention_layers=[[2, 5], [5, 11], [8, 17], [11, 23]])
            ```
        """
        model = build_from_backbones(cls, vision_model, text_model, torch_dtype, **config_kwargs)
        model.config.logits_by_causal_lm = logits_by_causal_lm(model)  # measured again, with the loaded weights
        return model

    @can_return_tuple
    @deprecate_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_vision_features: bool = False,
        output_cross_attentions: bool = False,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HiveCausalLMOutputWithPast:
        r"""
        Args:
            input_ids, pixel_values, image_mask, attention_mask, position_ids, cache, inputs_embeds, use_cache,
            output_vision_features, output_cross_attentions, past_key_values:
                As in `HiveModel.forward`.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Next-token targets aligned with `input_ids` (shifted inside); -100 marks ignored positions.
            shift_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets already shifted (position t is scored against `shift_labels[:, t]`), as sequence and context
                parallelism hand them over; used instead of `labels` when given.
            logits_to_keep (`int`, *optional*): compute logits for the last `logits_to_keep` positions only (0: all).

        Example:
            ```python
            >>> outputs = model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids)
            >>> outputs.loss.backward()
            ```
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        for name, targets in (("labels", labels), ("shift_labels", shift_labels)):
            check_labels(name, targets, input_ids)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_mask=image_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_vision_features=output_vision_features,
            output_cross_attentions=output_cross_attentions,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.llm_logits(hidden_states, logits_to_keep)
        loss = None
        if labels is not None or shift_labels is not None:
            if shift_labels is None:  # position t predicts token t + 1; the last position has no target
                shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
            check_label_values(shift_labels, logits.shape[-1])
            loss = causal_lm_loss(logits, shift_labels[:, slice_indices], num_items_in_batch)
        return HiveCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            vision_hidden_states=outputs.vision_hidden_states,
            cross_attentions=outputs.cross_attentions,
        )

    def generate(self, *args, **kwargs):
        """As `GenerationMixin.generate`; a cache to continue from may be passed as `cache` under every supported
        transformers (`past_key_values` works too, with transformers' deprecation warning from 5.25 on).

        Example:
            ```python
            >>> first = model.generate(**inputs, max_new_tokens=4, return_dict_in_generate=True)
            >>> rest = model.generate(input_ids=first.sequences, cache=first.cache, max_new_tokens=4)  # no image needed
            >>> # (before transformers 5.25 the returned cache is `first.past_key_values`)
            ```
        """
        # The value checks, once, before generate may run its prefill compiled (chunked prefill), where they are skipped.
        input_ids = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        check_input_values(input_ids, kwargs.get("pixel_values"), kwargs.get("image_mask"), self.get_input_embeddings().num_embeddings)
        return super().generate(*args, **generate_cache_kwargs(kwargs))

    def create_masks_for_generate(self, attention_mask=None, **kwargs):
        """As transformers' `create_masks_for_generate`, judged on the LLM's own cache layers: HIVE's image layers,
        appended after them, must not give a state-space LLM (Mamba2: every layer linear, no mask) a 4D mask."""
        cache = kwargs.get(CACHE_NAME)
        num_text_layers = self.config.text_config.num_hidden_layers
        if isinstance(cache, Cache) and all(cache.is_linear[:num_text_layers]):
            return attention_mask
        return create_masks_for_generate(attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, pixel_values=None, image_mask=None, use_cache=True, is_first_iteration=False, past_key_values=None, **kwargs
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            **{CACHE_NAME: resolve_cache(cache, past_key_values)},
            pixel_values=pixel_values,
            image_mask=image_mask,
            use_cache=use_cache,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and use_cache:
            # The image keys/values (and the image mask) live in the cache after prefill.
            model_inputs["pixel_values"] = None
            model_inputs["image_mask"] = None
        return model_inputs


__all__ = [
    "HiveCrossAttentionCacheLayer",
    "HiveForConditionalGeneration",
    "HiveModel",
    "HivePreTrainedModel",
]
