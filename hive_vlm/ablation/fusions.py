"""The fusions `hive ablate` compares, built around the same encoder and LLM weights.

Every fusion is a `HiveAblationFusion`: the model, its components in HIVE's names (`vision`, `projector`,
`cross_attention`, `llm`), and how a training batch and a generation prompt reach it. It trains through `hive train`'s
own stage trainers (`HiveAlignmentTrainer`, `HiveFinetuneTrainer`), which choose what trains in each stage.

    hive-paired      HIVE, `paired` mode: block k reads vision layer k of `cross_attention_layers`.
    hive-all-levels  HIVE, `all_levels` mode: every block reads all selected vision layers (level embeddings).
    single-level     HIVE blocks at the same LLM layers, every one reading the last vision layer (Flamingo-like).
    shared-softmax   HIVE, `paired`, in `cross_attention_mode="shared_softmax"` (the paper authors' fusion): each
                     level's image keys/values join its LLM layer's own self-attention, one softmax, no gate.
    flat             transformers' `LlavaForConditionalGeneration`: projected patch tokens inline in the LLM input.
    qformer          transformers' `Blip2ForConditionalGeneration` with its vision tower swapped for our encoder:
                     learned queries read the encoder's last hidden state; their outputs go inline in the LLM input.

Example:
    >>> fusion = build_fusion("flat", vision_dir, text_dir, image_token_id=5)  # doctest: +SKIP
    >>> fusion.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)["total"]["trainable"]  # doctest: +SKIP
    8320
"""

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from modeling_hive import HiveForConditionalGeneration
from modeling_hive.backbones_hive import as_tokens, eval_mode, probe_image_shape
from modeling_hive.configuration_hive import vision_num_levels
from modeling_hive.inspection_hive import parameters_reached
from modeling_hive.trainable_hive import component_counts


FUSIONS = ("hive-paired", "hive-all-levels", "single-level", "shared-softmax", "flat", "qformer")
IGNORE_INDEX = -100


def unique(*parameters) -> list[nn.Parameter]:
    """Each parameter once (a head tied to the embeddings is one tensor)."""
    return list({id(p): p for p in parameters}.values())


@dataclass
class HiveFusionSettings:
    """How each fusion is shaped.

    Args:
        cross_attention_layers: HIVE's `[vision_layer, text_layer]` pairs (hive-paired and hive-all-levels).
        single_level_text_layers: LLM layers of single-level's blocks, all reading the last vision layer; the text
            layers of `cross_attention_layers` when unset (as many connections as HIVE).
        cross_attention_intermediate_size: width of the MLP in each HIVE block (`HiveConfig`'s default when unset).
        flat_vision_feature_layer: the encoder layer LLaVA projects, as LLaVA's `vision_feature_layer` (-2: the
            penultimate, what the authors' SA baseline reads in every stage and what `hive transfer` reads).
        flat_projector_hidden_size: width of LLaVA's projector MLP (the LLM width when unset, LLaVA's own design).
        qformer_num_query_tokens, qformer_num_hidden_layers, qformer_intermediate_size: the Q-Former's shape; its
            width is the LLM's and its heads the LLM's attention heads.
        gate_init: the starting value of the HIVE fusions' tanh gates (`HiveConfig.gate_init`; 0.0, Flamingo's
            choice, makes every block start as the identity).
        shared_softmax_norm: shared-softmax's `HiveConfig.shared_softmax_norm` (`"queries_and_keys"`: the authors').
        intermediate_sizes: per fusion, a width override (`--match-params` fills it): the cross-attention MLP for
            the HIVE fusions, the projector for flat, the Q-Former MLP for qformer.
    """

    cross_attention_layers: list = field(default_factory=lambda: [[1, 1], [2, 2], [3, 3]])
    single_level_text_layers: list | None = None
    cross_attention_intermediate_size: int | None = None
    flat_vision_feature_layer: int = -2
    flat_projector_hidden_size: int | None = None
    qformer_num_query_tokens: int = 8
    qformer_num_hidden_layers: int = 2
    qformer_intermediate_size: int | None = None
    gate_init: float = 0.0
    shared_softmax_norm: str = "image_keys"
    intermediate_sizes: dict = field(default_factory=dict)


class HiveAblationFusion:
    """One fusion: a model plus what the harness needs to train and query every fusion the same way. It answers the
    stage trainers' `set_trainable` and `component_parameters` (`HiveTrainer(components=...)`) in HIVE's component
    names, so every fusion trains through `hive train`'s own trainers, freezing and LoRA.

    Args:
        name (`str`): one of `FUSIONS`.
        model (`nn.Module`): its forward takes `input_ids`, `attention_mask`, `pixel_values` and `labels`.
        parts (`Callable[[], dict[str, list[nn.Parameter]]]`): the model's `vision`, `projector`, `cross_attention` and
            `llm` parameters, read from its modules at each call (so LoRA layers a trainer injects are counted).
        encoder (`nn.Module`): the vision encoder (for the linear probe).
        image_token_id (`int`), num_image_tokens (`int`): placeholder tokens inserted after the first token of every
            sequence (0 for HIVE, which reads the image through cross-attention).
        readout (`str`): which encoder layers the fusion reads, in words (the study reports it).
    """

    def __init__(self, name, model, parts, encoder, image_token_id: int, num_image_tokens: int, readout: str):
        self.name = name
        self.readout = readout
        self.model = model
        self.parts = parts
        self.encoder = encoder
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens

    def model_inputs(self, batch: dict) -> dict:
        """A collated batch (`input_ids`, `attention_mask`, `pixel_values`, optional `labels` and `image_mask`) as
        this fusion's forward and generate take it."""
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "labels") if key in batch}
        if self.num_image_tokens == 0:
            if "image_mask" in batch:
                inputs["image_mask"] = batch["image_mask"]
            return inputs
        inputs.update(insert_image_tokens(inputs["input_ids"], inputs["attention_mask"], inputs.get("labels"),
                                          self.image_token_id, self.num_image_tokens))  # fmt: skip
        return inputs

    def loss(self, batch: dict) -> torch.Tensor:
        return self.model(**self.model_inputs(batch)).loss

    def component_parameters(self) -> dict[str, list[nn.Parameter]]:
        """`vision`, `projector`, `cross_attention` (empty for flat and qformer) and `llm` (LoRA weights included)."""
        return self.parts()

    def set_trainable(self, vision=None, projector=None, cross_attention=None, llm=None) -> dict[str, dict[str, int]]:
        """As `HivePreTrainedModel.set_trainable`: freezes (False) or unfreezes (True) whole components, None leaves one
        as it is, and the encoder weights the fusion never reads stay frozen. A HIVE model does this itself; for LLaVA
        and BLIP-2 the unread encoder weights (LLaVA's layers above `vision_feature_layer`, ...) are found by one probe
        backward. Returns the counts in the same layout (`{component: {"trainable", "total"}, "total": {...}}`)."""
        flags = {"vision": vision, "projector": projector, "cross_attention": cross_attention, "llm": llm}
        if hasattr(self.model, "set_trainable"):  # HIVE
            return self.model.set_trainable(**flags)
        components = self.component_parameters()
        for name, flag in flags.items():
            if flag is not None:
                for parameter in components[name]:
                    parameter.requires_grad_(bool(flag))
        vision_trainable = [p for p in components["vision"] if p.requires_grad]
        if vision_trainable:
            for parameter, reached in zip(vision_trainable, parameters_reached(self.loss(probe_batch(self)), vision_trainable)):
                parameter.requires_grad_(reached)
        return component_counts(components)


def insert_image_tokens(input_ids, attention_mask, labels, image_token_id: int, num_image_tokens: int) -> dict:
    """Inserts `num_image_tokens` image tokens right after the first real token (BOS) of every row.

    Shapes: (B, T) in, (B, T + N) out. Padding stays on its side; the new positions are attended (mask 1) and
    ignored by the loss (label -100).

    Example:
        >>> import torch
        >>> out = insert_image_tokens(torch.tensor([[0, 1, 7]]), torch.tensor([[0, 1, 1]]), None, 9, 2)
        >>> out["input_ids"].tolist(), out["attention_mask"].tolist()
        ([[0, 1, 9, 9, 7]], [[0, 1, 1, 1, 1]])
    """
    batch_size, length = input_ids.shape
    first = attention_mask.long().argmax(dim=1)  # (B,) index of the first real token
    positions = torch.arange(length + num_image_tokens, device=input_ids.device)[None].expand(batch_size, -1)  # (B, T + N)
    after = first[:, None] + 1
    is_image = (positions >= after) & (positions < after + num_image_tokens)
    source = torch.where(positions >= after + num_image_tokens, positions - num_image_tokens, positions)
    source = source.clamp(max=length - 1)

    def spread(values, image_value):
        return torch.where(is_image, torch.full_like(source, image_value), values.gather(1, source))

    out = {"input_ids": spread(input_ids, image_token_id), "attention_mask": spread(attention_mask.long(), 1)}
    if labels is not None:
        out["labels"] = spread(labels, IGNORE_INDEX)
    return out


def probe_batch(fusion: HiveAblationFusion) -> dict:
    """One synthetic sample (zero image, four labelled tokens): enough to see which weights the loss reaches."""
    config = fusion.encoder.config
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    device = next(fusion.model.parameters()).device  # a Trainer may have moved the model to its device
    ids = torch.tensor([[1, 4, 5, 2]], device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
            "pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), size, size, device=device),
            "image_mask": torch.ones(1, dtype=torch.bool, device=device)}  # fmt: skip


def _hive(name, vision_dir, text_dir, settings: HiveFusionSettings, image_token_id) -> HiveAblationFusion:
    pairs = [list(pair) for pair in settings.cross_attention_layers]
    mode = "all_levels" if name == "hive-all-levels" else "paired"
    if name == "single-level":
        last = AutoConfig.from_pretrained(vision_dir).num_hidden_layers - 1
        text_layers = settings.single_level_text_layers or [text for _, text in pairs]
        pairs = [[last, text] for text in text_layers]
    kwargs = {"cross_attention_layers": pairs, "hierarchy_mode": mode, "gate_init": settings.gate_init}
    if name == "shared-softmax":  # no gate, no MLP: its budget is the projectors and the image k/v projections
        kwargs.update(cross_attention_mode="shared_softmax", shared_softmax_norm=settings.shared_softmax_norm)
    width = settings.intermediate_sizes.get(name) or settings.cross_attention_intermediate_size
    if width and name != "shared-softmax":
        kwargs["cross_attention_intermediate_size"] = int(width)
    model = HiveForConditionalGeneration.from_backbones(str(vision_dir), str(text_dir), **kwargs)
    depth = vision_num_levels(model.config.vision_config)
    readout = f"layers {', '.join(map(str, model.config.vision_layers))} of {depth}" + (", every block" if name == "single-level" else "")
    return HiveAblationFusion(name, model, model.component_parameters, model.model.vision_model, image_token_id, 0, readout)


def _flat(vision_dir, text_dir, settings: HiveFusionSettings, image_token_id) -> HiveAblationFusion:
    vision = AutoModel.from_pretrained(vision_dir)
    text = AutoModelForCausalLM.from_pretrained(text_dir)
    config = LlavaConfig(vision_config=vision.config.to_dict(), text_config=text.config.to_dict(), image_token_id=image_token_id,
                         vision_feature_layer=settings.flat_vision_feature_layer, vision_feature_select_strategy="full")  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    width = settings.intermediate_sizes.get("flat") or settings.flat_projector_hidden_size
    projector = model.model.multi_modal_projector
    if width and width != projector.linear_1.out_features:
        # LlavaMultiModalProjector computes linear_2(act(linear_1(x))): a wider hidden layer changes only the budget.
        projector.linear_1 = nn.Linear(projector.linear_1.in_features, int(width))
        projector.linear_2 = nn.Linear(int(width), projector.linear_2.out_features)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(text.get_decoder().state_dict())
    model.lm_head.load_state_dict(text.get_output_embeddings().state_dict())
    with eval_mode(vision), torch.no_grad():  # how many tokens the chosen layer has ("full" keeps a CLS token)
        probe = vision(pixel_values=torch.zeros(probe_image_shape(vision.config)), output_hidden_states=True)
    num_tokens = as_tokens(probe.hidden_states[settings.flat_vision_feature_layer]).shape[1]

    def parts():
        return {"vision": list(model.model.vision_tower.parameters()), "projector": list(model.model.multi_modal_projector.parameters()),
                "cross_attention": [], "llm": unique(*model.model.language_model.parameters(), *model.lm_head.parameters())}  # fmt: skip

    layer, depth = settings.flat_vision_feature_layer, vision_num_levels(vision.config)
    readout = f"layer {depth + layer if layer < 0 else layer - 1} of {depth} (vision_feature_layer {layer})"
    return HiveAblationFusion("flat", model, parts, model.model.vision_tower, image_token_id, num_tokens, readout)


def _qformer(vision_dir, text_dir, settings: HiveFusionSettings, image_token_id) -> HiveAblationFusion:
    vision = AutoModel.from_pretrained(vision_dir)
    text = AutoModelForCausalLM.from_pretrained(text_dir)
    width, heads = text.config.hidden_size, text.config.num_attention_heads
    intermediate = settings.intermediate_sizes.get("qformer") or settings.qformer_intermediate_size or 4 * width
    qformer = Blip2QFormerConfig(hidden_size=width, num_hidden_layers=settings.qformer_num_hidden_layers, num_attention_heads=heads,
                                 intermediate_size=int(intermediate), encoder_hidden_size=vision.config.hidden_size,
                                 cross_attention_frequency=1)  # fmt: skip
    # Blip2 always builds a Blip2VisionModel (and sizes the Q-Former's cross-attention from it): a one-layer
    # placeholder of the encoder's width, replaced by our encoder below.
    placeholder = {"hidden_size": vision.config.hidden_size, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8,
                   "image_size": vision.config.image_size, "patch_size": vision.config.patch_size}  # fmt: skip
    config = Blip2Config(vision_config=placeholder, qformer_config=qformer.to_dict(), text_config=text.config.to_dict(),
                         num_query_tokens=settings.qformer_num_query_tokens, image_token_id=image_token_id)  # fmt: skip
    model = Blip2ForConditionalGeneration(config)
    # BLIP-2's own start for the queries (LAVIS: normal, std initializer_range). transformers zeroes them, a value only
    # ever overwritten by a trained checkpoint: from zeros every query starts identical, and the Q-Former's first
    # LayerNorm, normalising a zero vector, multiplies their gradient by about 1/sqrt(eps) (~1e11 measured).
    nn.init.normal_(model.query_tokens, std=qformer.initializer_range)
    model.vision_model = vision
    model.language_model.load_state_dict(text.state_dict())

    def parts():
        return {"vision": list(model.vision_model.parameters()),
                "projector": [model.query_tokens, *model.qformer.parameters(), *model.language_projection.parameters()],
                "cross_attention": [], "llm": list(model.language_model.parameters())}  # fmt: skip

    depth = vision_num_levels(vision.config)
    readout = f"the last hidden state (layer {depth - 1} of {depth}, after the encoder's final norm)"
    return HiveAblationFusion("qformer", model, parts, vision, image_token_id, settings.qformer_num_query_tokens, readout)


def build_fusion(name: str, vision_dir, text_dir, image_token_id: int, settings: HiveFusionSettings | None = None,
                 seed: int = 0, vocab_size: int | None = None) -> HiveAblationFusion:
    """Builds fusion `name` around the encoder in `vision_dir` and the causal LM in `text_dir` (both loaded
    unchanged); the fusion's new weights are initialised from `seed`.

    Args:
        name (`str`): one of `FUSIONS`.
        vision_dir, text_dir (`str`): folders (or Hub ids) `AutoModel` and `AutoModelForCausalLM` load.
        image_token_id (`int`): the tokenizer's image placeholder (flat and qformer).
        settings (`HiveFusionSettings`, *optional*): the fusions' shapes.
        seed (`int`): seeds the fusion's fresh weights.
        vocab_size (`int`, *optional*): the tokenizer's size; an LLM with fewer embeddings (a pretrained LLM whose
            tokenizer gained the image placeholder) is resized to it.
    """
    settings = settings or HiveFusionSettings()
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {', '.join(FUSIONS)}.")
    torch.manual_seed(seed)
    builders = {"flat": _flat, "qformer": _qformer}
    if name in builders:
        fusion = builders[name](str(vision_dir), str(text_dir), settings, image_token_id)
    else:
        fusion = _hive(name, vision_dir, text_dir, settings, image_token_id)
    if vocab_size and fusion.model.get_input_embeddings().num_embeddings < vocab_size:
        fusion.model.resize_token_embeddings(vocab_size)
    fusion.model.float().train()
    return fusion


def fusion_budget(name: str, vision_dir, text_dir, image_token_id: int, settings: HiveFusionSettings, width=None,
                  vocab_size: int | None = None) -> int:
    """The fusion weights of `name` the loss reaches (its stage-2 budget with the encoder and LLM frozen), with width
    override `width`."""
    trial = HiveFusionSettings(**{**settings.__dict__, "intermediate_sizes": {**settings.intermediate_sizes, name: width}})
    fusion = build_fusion(name, vision_dir, text_dir, image_token_id, trial, vocab_size=vocab_size)
    return fusion.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)["total"]["trainable"]


def match_budgets(fusions, reference: str, vision_dir, text_dir, image_token_id: int, settings: HiveFusionSettings,
                  tolerance: float = 0.10, vocab_size: int | None = None) -> dict:
    """Widths that bring every fusion's stage-2 budget within `tolerance` of `reference`'s.

    A budget is affine in the width (each width-dependent layer holds `in x width + width` or `width x out + out`
    weights), so two builds give the line and a third checks the result. Returns `{fusion: {"width", "budget",
    "reference"}}`; a ValueError names a fusion that cannot reach the reference by its width alone. A fusion without
    a width (shared-softmax) keeps its own budget, with width None.
    """
    target = fusion_budget(reference, vision_dir, text_dir, image_token_id, settings, vocab_size=vocab_size)
    matched = {}
    for name in fusions:
        if name == reference:
            matched[name] = {"width": None, "budget": target, "reference": target}
            continue
        low, high = 8, 64
        at_low = fusion_budget(name, vision_dir, text_dir, image_token_id, settings, low, vocab_size)
        at_high = fusion_budget(name, vision_dir, text_dir, image_token_id, settings, high, vocab_size)
        if at_low == at_high:
            matched[name] = {"width": None, "budget": at_low, "reference": target}
            continue
        width = max(1, round(low + (target - at_low) * (high - low) / (at_high - at_low)))
        budget = fusion_budget(name, vision_dir, text_dir, image_token_id, settings, width, vocab_size)
        if abs(budget - target) > tolerance * target:
            raise ValueError(f"--match-params: {name} cannot reach {reference}'s {target:,} trainable parameters by its width "
                             f"alone (width {width} gives {budget:,}); change its depth or query count in the recipe.")  # fmt: skip
        matched[name] = {"width": width, "budget": budget, "reference": target}
    return matched
