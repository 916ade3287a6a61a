"""Benchmark sizes: the backbone configs HIVE and LLaVA share, and the token counts every measure uses.

Example:
    >>> from hive_vlm.bench.sizes import BENCH_SIZES
    >>> BENCH_SIZES["base"].image_tokens
    576
"""

from dataclasses import dataclass, field

from transformers import Qwen2Config, SiglipVisionConfig


@dataclass(frozen=True)
class HiveBenchSize:
    """One benchmark size.

    Args:
        name: what `hive bench --size` calls it.
        vision: `SiglipVisionConfig` fields of the shared encoder.
        text: `Qwen2Config` fields of the shared LLM.
        text_tokens: prompt length in text tokens (HIVE's whole prompt; LLaVA adds the image tokens to it).
        long_context_images: images' worth of tokens in the long decode test (5 x 576 = 2,880 at `base`).
        decode_tokens: tokens generated per timed decode run.
        decode_batch_size: samples decoded together in the batched decode measure (the ratio keys are at batch 1).
        train_batch_size: samples in the stage-2 training step.
        matmul_sizes: square sizes tried when measuring the matmul peak (the best one counts).
        cpu_sweep_batch_limit: the largest batch the batch sweep tries on a CPU (a time cap; on a GPU memory decides).
        cpu_memory_budget_gib: the memory every model gets in the CPU batch sweep, unless --memory-budget-gib says.
    """

    name: str
    vision: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    text_tokens: int = 48
    long_context_images: int = 5
    decode_tokens: int = 32
    decode_batch_size: int = 8
    train_batch_size: int = 2
    matmul_sizes: tuple[int, ...] = (1024, 2048)
    cpu_sweep_batch_limit: int = 32
    cpu_memory_budget_gib: float = 1.0

    @property
    def image_tokens(self) -> int:
        """Patches per image: (image_size / patch_size) ** 2."""
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2

    @property
    def long_context_image_tokens(self) -> int:
        return self.long_context_images * self.image_tokens

    def vision_config(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(**self.vision)

    def text_config(self) -> Qwen2Config:
        return Qwen2Config(**self.text)


BENCH_SIZES = {
    # SigLIP-so400m proportions at 336 px (24 x 24 = 576 patches) and Qwen2-0.5B.
    "base": HiveBenchSize(
        name="base",
        vision=dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304, image_size=336, patch_size=14),
        text=dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        decode_tokens=64,
        decode_batch_size=16,
        train_batch_size=8,
        matmul_sizes=(2048, 4096, 8192),
        cpu_memory_budget_gib=8.0,
    ),
    # The same token counts (576 and 2,880 image tokens) and the same LLM depth (24 layers, so 4 blocks against 24 layers
    # as at `base`) at a fraction of the widths; the encoder keeps 2/3 of its depth so that it still costs about what
    # the LLM costs on LLaVA's prompt, and the vocabulary keeps the LM head's share of the LLM's weights (~0.4x).
    "small": HiveBenchSize(
        name="small",
        vision=dict(hidden_size=288, num_hidden_layers=18, num_attention_heads=4, intermediate_size=1080, image_size=336, patch_size=14),
        text=dict(
            hidden_size=192,
            num_hidden_layers=24,
            num_attention_heads=3,
            num_key_value_heads=1,
            intermediate_size=1024,
            vocab_size=32000,
            max_position_embeddings=4096,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        decode_tokens=32,
        train_batch_size=2,
        matmul_sizes=(1024, 2048),
    ),
    # For the smoke test: every code path, 16 image tokens, seconds on a laptop.
    "toy": HiveBenchSize(
        name="toy",
        vision=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14),
        text=dict(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            vocab_size=256,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        ),
        text_tokens=8,
        decode_tokens=4,
        decode_batch_size=2,
        train_batch_size=2,
        matmul_sizes=(128, 256),
        cpu_sweep_batch_limit=8,
        cpu_memory_budget_gib=0.0625,
    ),
}
