"""The demo's settings (`FULL` for the README's figures, `FAST` for tests) and the `hive train` recipe they make."""

from dataclasses import dataclass, field

from transformers import AutoConfig

from hive_vlm.data.shapes_text import CAPTION_PROMPT
from hive_vlm.training.recipe import HiveRecipe, parse_recipe
from modeling_hive.configuration_hive import spread_layer_pairs


@dataclass
class HiveDemoSettings:
    """Sizes, data and schedules of one demo run.

    Args:
        image_size, patch_size: hive-shapes image side and the ViT's patch side, in pixels.
        vision_hidden_size, vision_layers, text_hidden_size, text_layers: backbone sizes (4 heads each).
        text_initializer_range: the tiny LLM's `initializer_range`, about 1/sqrt(width) rather than the 0.02 made for
            wide models. HIVE's own blocks and projectors are initialised with it too (HiveConfig takes the LLM's).
        vision_initializer_range: the tiny ViT's `initializer_range`. At 0.02 its patch embeddings start far fainter
            than the unit-scale sine-cosine position table, and a ViT of this size trained on shape labels alone
            reaches 37% in 1500 steps; at 0.1 it reaches 85% in 600.
        cross_attention_layers: `[vision_layer, text_layer]` pairs, one per level of the hierarchy.
        hierarchy_mode, cross_attention_intermediate_size, gate_init: as in `HiveConfig`.
        num_train, num_test: hive-shapes scenes in train and in each of test and test_compositional.
        pretrain_steps, pretrain_batch_size, pretrain_learning_rate: stage 0, the LLM's causal-LM pretraining.
        turns_per_chat: question-answer turns per stage-3 chat (see `hive_vlm.data.shapes_text.shapes_conversations`).
        stage1, stage2, stage3: the recipe's `TrainingArguments` fields of each stage. Stage 3 is where the model
            learns to pick out the object a question names, and it gains from every chat it sees: 86,400 chats
            (2700 steps of 32) score 73.1% on test, 28,800 score 63.8% (docs/demo.md). Steps of 32 cost less per
            chat than steps of 16 on 2 CPU cores.
        eval_batch_size: prompts per `generate()` call during evaluation.
    """

    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 64
    vision_layers: int = 4
    text_hidden_size: int = 64
    text_layers: int = 4
    text_initializer_range: float = 0.1
    vision_initializer_range: float = 0.1
    cross_attention_layers: list = field(default_factory=lambda: [[0, 1], [1, 2], [3, 3]])
    hierarchy_mode: str = "paired"
    cross_attention_intermediate_size: int | None = 128
    gate_init: float = 0.1
    num_train: int = 4000
    num_test: int = 200
    pretrain_steps: int = 150
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 3e-3
    turns_per_chat: int = 3
    stage1: dict = field(default_factory=lambda: {"max_steps": 30, "per_device_train_batch_size": 32, "learning_rate": 1e-3,
                                                  "mask_ratio": 0.5})
    stage2: dict = field(default_factory=lambda: {"max_steps": 2000, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
                                                  "train_vision": True})
    stage3: dict = field(default_factory=lambda: {"max_steps": 2700, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
                                                  "vision_learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32})
    eval_batch_size: int = 32


FULL = HiveDemoSettings()
FAST = HiveDemoSettings(
    image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=4, text_hidden_size=32, text_layers=4,
    cross_attention_layers=[[0, 1], [1, 2], [3, 3]], num_train=64, num_test=8,
    pretrain_steps=10, pretrain_batch_size=16,
    stage1={"max_steps": 3, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "mask_ratio": 0.5},
    stage2={"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-3},
    stage3={"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "vision_learning_rate": 1e-4,
            "lora_r": 4, "lora_alpha": 8},
    eval_batch_size=16,
)  # fmt: skip
EVAL_SPLITS = ("test", "test_compositional")
# The shapes tokenizer lowercases, so answers come out as "a", not "A": LLaVA's ScienceQA parser is case-sensitive,
# lmms-eval's is not.
PROTOCOLS = {"scienceqa": "lmms-eval"}


MAX_LENGTH = 384


def demo_recipe(settings: HiveDemoSettings, output_dir, text_model: str | None = None, vision_model: str | None = None,
                cross_attention_layers=None, seed: int = 0) -> HiveRecipe:
    """The demo's `HiveRecipe`: `settings` for sizes and schedules.

    Args:
        settings (`HiveDemoSettings`): sizes, data and schedules.
        output_dir (`str`): the run's folder.
        text_model (`str`, *optional*): a user's LLM (Hub id or folder), with its own tokenizer. When unset, the tiny
            LLM is built from `settings`, with a word-level tokenizer built from hive-shapes, and stage 0 pretrains it.
        vision_model (`str`, *optional*): an encoder's Hub id or folder; a tiny ViT is built from `settings` when unset.
        cross_attention_layers (`list`, *optional*): the layer pairs; `settings.cross_attention_layers` when unset.
        seed (`int`): the run's seed (data, initialisation, data order).
    """
    model = {"hive": {
        "cross_attention_layers": cross_attention_layers or settings.cross_attention_layers,
        "hierarchy_mode": settings.hierarchy_mode, "gate_init": settings.gate_init,
    }}  # fmt: skip
    if settings.cross_attention_intermediate_size:
        model["hive"]["cross_attention_intermediate_size"] = settings.cross_attention_intermediate_size
    if text_model:
        model["text_model"] = str(text_model)
    else:
        model["text_config"] = text_config(settings)
    if vision_model:
        model["vision_model"] = str(vision_model)
    else:
        model["vision_config"] = vision_config(settings)
    # One checkpoint, at the last step: its trainer_state.json gives the card each stage's step count and loss.
    common = {"logging_steps": 50, "report_to": "none", "save_total_limit": 1}
    values = {
        "name": "demo-shapes",
        "output_dir": str(output_dir),
        "seed": seed,
        "model": model,
        "data": {
            "tokenizer": None if text_model else "shapes",
            "max_length": MAX_LENGTH,
            "shapes": {"seed": seed, "image_size": settings.image_size, "num_train": settings.num_train,
                       "num_validation": 8, "num_test": settings.num_test,
                       "num_test_compositional": settings.num_test, "turns_per_chat": settings.turns_per_chat},
            "stage1": {"source": "shapes"},
            "stage2": {"source": "shapes"},
            "stage3": {"source": "shapes"},
        },
        # Stage 0 pretrains the tiny LLM (HIVE assumes a pretrained one, and none can be downloaded here).
        **({} if text_model else {"stage0": {
            **common, "save_steps": settings.pretrain_steps, "max_steps": settings.pretrain_steps,
            "per_device_train_batch_size": settings.pretrain_batch_size, "learning_rate": settings.pretrain_learning_rate,
        }}),
        "stage1": {**common, "save_steps": settings.stage1["max_steps"], **settings.stage1},
        "stage2": {**common, "save_steps": settings.stage2["max_steps"], "caption_prompt": CAPTION_PROMPT, **settings.stage2},
        "stage3": {**common, "save_steps": settings.stage3["max_steps"], **settings.stage3},
    }  # fmt: skip
    return parse_recipe(values, where="demo recipe")


def vision_config(settings: HiveDemoSettings) -> dict:
    """The tiny ViT's config (4 heads)."""
    return {"model_type": "vit", "image_size": settings.image_size, "patch_size": settings.patch_size,
            "hidden_size": settings.vision_hidden_size, "num_hidden_layers": settings.vision_layers,
            "num_attention_heads": 4, "intermediate_size": 2 * settings.vision_hidden_size,
            "initializer_range": settings.vision_initializer_range}  # fmt: skip


def text_config(settings: HiveDemoSettings) -> dict:
    """The tiny Llama-style LLM's config (4 heads, 2 key/value heads); the run sizes its vocabulary to the tokenizer."""
    return {"model_type": "llama", "hidden_size": settings.text_hidden_size, "num_hidden_layers": settings.text_layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 2 * settings.text_hidden_size,
            "max_position_embeddings": MAX_LENGTH, "initializer_range": settings.text_initializer_range}  # fmt: skip


def real_backbone_pairs(settings: HiveDemoSettings, vision_model: str | None, text_model: str | None) -> list:
    """Three layer pairs spread over the depths of the given backbones (the tiny ones' depths otherwise)."""
    vision_depth, text_depth = settings.vision_layers, settings.text_layers
    if vision_model:
        config = AutoConfig.from_pretrained(vision_model)
        vision_depth = (getattr(config, "vision_config", None) or config).num_hidden_layers
    if text_model:
        text_depth = AutoConfig.from_pretrained(text_model).get_text_config(decoder=True).num_hidden_layers
    return spread_layer_pairs(len(settings.cross_attention_layers), vision_depth, text_depth)
