"""The cross-attention maps and gates of a HIVE model, and the figure that draws them (`hive visualize`'s library)."""

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hive_vlm.eval.runner import load_model
from modeling_hive.images_hive import load_rgb_image


@dataclass
class HiveLevelAttention:
    """The cross-attention map of one vision level: `weights` (grid_height, grid_width), summing to 1."""

    vision_layer: int
    text_layers: list[int]
    weights: np.ndarray


@dataclass
class HiveGate:
    """tanh of the gates of the cross-attention block feeding `vision_layer` into LLM layer `text_layer`."""

    vision_layer: int
    text_layer: int
    attn: float
    mlp: float


@dataclass
class HiveAttentionFigure:
    """What `visualize` drew: the PNG, its per-level maps and gates, and the panels counted on the drawn figure
    (`num_level_panels`: panels showing an attention map over the image; `num_panels`: all of them)."""

    path: Path
    question: str
    answer: str
    levels: list[HiveLevelAttention] = field(default_factory=list)
    gates: list[HiveGate] = field(default_factory=list)
    num_level_panels: int = 0
    num_panels: int = 0


def _patch_grid(vision_config) -> tuple[int, int]:
    def pair(value):
        return tuple(value) if isinstance(value, (list, tuple)) else (value, value)

    (height, width), (patch_height, patch_width) = pair(vision_config.image_size), pair(vision_config.patch_size)
    return height // patch_height, width // patch_width


def _prompt(processor, question: str) -> tuple[str, bool]:
    """The text the VQA pipeline feeds the model, and whether the tokenizer must add its special tokens."""
    if getattr(processor, "chat_template", None) is None:
        return question, True
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True), False


def _question_positions(tokenizer, text: str, question: str, add_special_tokens: bool) -> list[int]:
    """Token positions of `question` inside `text` (every position when the tokenizer gives no offsets)."""
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    start = text.find(question)
    offsets = encoding.get("offset_mapping")
    if start < 0 or offsets is None:
        return list(range(len(encoding["input_ids"])))
    end = start + len(question)
    positions = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return positions or list(range(len(encoding["input_ids"])))


@torch.no_grad()
def cross_attention_maps(model, processor, image, question: str, max_new_tokens: int = 16):
    """
    Per-level cross-attention maps of a HIVE model for one question about one image, the gates, and its answer.

    In `paired` mode a level's map averages the blocks that read that vision layer; in `all_levels` mode every
    block reads every level, and a level's map is the blocks' attention over that level's tokens (renormalised).

    Args:
        model (`HiveForConditionalGeneration`): the model (its remote-code class works too).
        processor (`HiveProcessor`): its processor.
        image (PIL image, array or path): the image.
        question (`str`): the question, as the model was trained to read it.
        max_new_tokens (`int`, *optional*, defaults to 16): longest answer.

    Returns:
        `(levels, gates, answer)`: a `HiveLevelAttention` per level in `config.vision_layers` order, a `HiveGate` per
        block in `config.cross_attention_layers` order, and the greedy answer.

    Example:
        >>> levels, gates, answer = cross_attention_maps(model, processor, "scene.png", "What color is the circle?")  # doctest: +SKIP
        >>> levels[0].weights.shape  # the patch grid  # doctest: +SKIP
        (8, 8)
    """
    config = model.config
    text, add_special_tokens = _prompt(processor, question)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    outputs = model(**inputs, output_cross_attentions=True)
    positions = _question_positions(processor.tokenizer, text, question, add_special_tokens)
    grid = _patch_grid(config.vision_config)
    num_patches = grid[0] * grid[1]
    vision_layers = config.vision_layers

    per_level = {layer: [] for layer in vision_layers}
    for (vision_layer, text_layer), weights in zip(config.cross_attention_layers, outputs.cross_attentions):
        attention = weights[0].float().mean(dim=0)[positions].mean(dim=0)  # (num_image_tokens,)
        if config.hierarchy_mode == "all_levels":
            chunks = attention.reshape(len(vision_layers), -1)  # levels concatenated in vision_layers order
            for layer, chunk in zip(vision_layers, chunks):
                per_level[layer].append((text_layer, chunk))
        else:
            per_level[vision_layer].append((text_layer, attention))

    levels = []
    for layer in vision_layers:
        maps = []
        for _, attention in per_level[layer]:
            if attention.numel() < num_patches:
                raise ValueError(
                    f"vision layer {layer} has {attention.numel()} image tokens, fewer than the {grid[0]}x{grid[1]} patch "
                    "grid of vision_config.image_size / patch_size; is this a HIVE model with that encoder?"
                )
            patches = attention[-num_patches:]  # extra tokens (CLS, registers) come first
            maps.append(patches / patches.sum().clamp(min=1e-12))
        weights = torch.stack(maps).mean(dim=0).reshape(grid).cpu().numpy()
        levels.append(HiveLevelAttention(layer, sorted(text_layer for text_layer, _ in per_level[layer]), weights))

    gates = [
        HiveGate(vision_layer, text_layer, block.cross_attn_attn_gate.tanh().item(), block.cross_attn_mlp_gate.tanh().item())
        for block, (vision_layer, text_layer) in zip(model.model.cross_attention_layers, config.cross_attention_layers)
    ]
    sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    return levels, gates, answer


def draw_cross_attention(image, levels, gates, question: str, answer: str, out) -> HiveAttentionFigure:
    """
    Draws the figure and writes it as a PNG (atomically): the image, one panel per level, then the gates.

    Args:
        image (`PIL.Image.Image`): the image the maps are over.
        levels (`list[HiveLevelAttention]`), gates (`list[HiveGate]`), answer (`str`): from `cross_attention_maps`.
        question (`str`): shown in the title.
        out (`str` or `os.PathLike`): the PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy, and only the figure uses it: loaded on demand
    from matplotlib.figure import Figure  # (on demand, as above)

    image = image.convert("RGB")
    width, height = image.size
    num_panels = len(levels) + 2
    figure = Figure(figsize=(2.6 * num_panels, 3.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, num_panels)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    for ax, level in zip(axes[1 : 1 + len(levels)], levels):
        ax.imshow(image, interpolation="nearest")
        ax.imshow(level.weights, cmap="inferno", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest")
        layers = ", ".join(str(t) for t in level.text_layers)
        ax.set_title(f"vision layer {level.vision_layer}\n-> LLM layer {layers}", fontsize=9)
    for ax in axes[: 1 + len(levels)]:
        ax.set_xticks([])
        ax.set_yticks([])
    gate_axis = axes[-1]
    positions = np.arange(len(gates))
    gate_axis.bar(positions - 0.2, [gate.attn for gate in gates], width=0.4, label="attn")
    gate_axis.bar(positions + 0.2, [gate.mlp for gate in gates], width=0.4, label="mlp")
    gate_axis.axhline(0.0, color="black", linewidth=0.8)
    gate_axis.set_xticks(positions, [f"v{gate.vision_layer}->t{gate.text_layer}" for gate in gates], fontsize=8)
    gate_axis.set_title("tanh(gate) per block", fontsize=9)
    gate_axis.legend(fontsize=7)
    shown = answer if len(answer) <= 40 else answer[:37] + "..."
    figure.suptitle(f"Q: {question.splitlines()[0]}   A: {shown}", fontsize=10)
    figure.tight_layout()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png")
        os.replace(temporary, out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    num_level_panels = sum(len(ax.images) == 2 for ax in figure.axes)  # the image under its attention map
    return HiveAttentionFigure(out, question, answer, levels, gates, num_level_panels, len(figure.axes))


def visualize(model, image, question: str, out, processor=None, device: str | None = None) -> HiveAttentionFigure:
    """
    Draws a HIVE model's per-level cross-attention maps and gates for one question about one image.

    Args:
        model (`str`, `os.PathLike` or `HiveForConditionalGeneration`): a saved HIVE folder (loaded with
            `trust_remote_code=True`), or a model (then pass `processor`).
        image (PIL image, array or path): the image.
        question (`str`): the question.
        out (`str` or `os.PathLike`): the PNG to write.
        processor (`HiveProcessor`, *optional*): the processor, when `model` is a model.
        device (`str`, *optional*): where to run a loaded folder (default: cuda when available, else cpu).

    Returns:
        `HiveAttentionFigure`: the path, the maps, the gates, the answer and `num_level_panels` (one per level of
        `config.vision_layers`).

    Example:
        >>> from hive_vlm.visualize import visualize
        >>> figure = visualize("hive-demo/model", "hive-demo/fresh_scene.png", "What color is the circle?", "attention.png")  # doctest: +SKIP
        >>> figure.num_level_panels  # doctest: +SKIP
        3
    """
    if isinstance(model, (str, os.PathLike)):
        model, processor = load_model(model, device=device)
    elif processor is None:
        raise ValueError("visualize got a model object but no processor; pass processor=... (or a saved folder).")
    if not hasattr(model, "config") or not hasattr(model.config, "cross_attention_layers"):
        raise TypeError(f"visualize needs a HIVE model (a config with cross_attention_layers), got {type(model).__name__}.")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty; pass the text to ask with --question.")
    image = load_rgb_image(image, where="image")
    model.eval()
    levels, gates, answer = cross_attention_maps(model, processor, image, question)
    return draw_cross_attention(image, levels, gates, question, answer, out)
