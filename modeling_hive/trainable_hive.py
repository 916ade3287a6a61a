"""Which of HIVE's weights train: its four components (vision, projector, cross_attention, llm), frozen or unfrozen
as a whole, and the encoder weights no connected layer uses, which never train."""

from torch import nn
from transformers.utils import logging

from .inspection_hive import find_unused_vision_parameters


logger = logging.get_logger(__name__)


def component_parameters(model) -> dict[str, list[nn.Parameter]]:
    """HIVE's four components and their parameters: vision, projector, cross_attention, llm (head included)."""
    hive = model.base_model
    projector = list(hive.multi_modal_projectors.parameters())
    if hive.level_embeddings is not None:
        projector.append(hive.level_embeddings)
    llm = list(hive.language_model.parameters())
    head = model.get_output_embeddings() if hasattr(model, "lm_head") else None
    if head is not None:
        llm += [p for p in head.parameters() if all(p is not q for q in llm)]  # a tied head adds nothing
    return {
        "vision": list(hive.vision_model.parameters()),
        "projector": projector,
        "cross_attention": list(hive.cross_attention_layers.parameters()),
        "llm": llm,
    }


def component_counts(components: dict) -> dict[str, dict[str, int]]:
    """`{component: {"trainable": n, "total": m}}` in elements, plus a `"total"` row over all components."""
    counts = {
        name: {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}
        for name, params in components.items()
    }
    counts["total"] = {key: sum(row[key] for row in counts.values()) for key in ("trainable", "total")}
    return counts


def freeze_unused_vision_parameters(model) -> None:
    """Freezes the encoder weights no connected layer depends on: they never get a gradient, and no optimizer, DDP
    or FSDP wrapper should see them as trainable. Found once when the model is built (before any hook, offload or
    quantization), applied by name."""
    hive = model.base_model
    if hive.unused_vision_parameter_names is None:  # the probe could not run while the encoder was on meta
        hive.unused_vision_parameter_names = find_unused_vision_parameters(hive)
    if not hive.unused_vision_parameter_names:
        return
    parameters = dict(hive.vision_model.named_parameters())
    for name in hive.unused_vision_parameter_names:
        parameters[name].requires_grad_(False)
    logger.info(f"HIVE froze the encoder weights no connected layer uses: {', '.join(hive.unused_vision_parameter_names)}")


def set_trainable(model, vision=None, projector=None, cross_attention=None, llm=None) -> dict[str, dict[str, int]]:
    """Freezes (False) or unfreezes (True) whole components (None leaves one as it is); logs and returns the counts
    (`HivePreTrainedModel.set_trainable` documents them)."""
    wanted = {"vision": vision, "projector": projector, "cross_attention": cross_attention, "llm": llm}
    components = component_parameters(model)
    for name, flag in wanted.items():
        if flag is not None:
            for parameter in components[name]:
                parameter.requires_grad_(bool(flag))
    if vision:
        freeze_unused_vision_parameters(model)
    counts = component_counts(components)
    logger.info("HIVE trainable parameters: " + ", ".join(f"{k} {v['trainable']:,}/{v['total']:,}" for k, v in counts.items()))
    return counts
