"""Tiny HIVE models, processors and inputs that several test files build; `conftest.py` serves them as fixtures."""

import torch
from transformers import ViTImageProcessorPil

from hive_vlm.data.tokenizer import build_tokenizer
from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveForConditionalGeneration, HiveProcessor


PAIRS = [("vit", "llama"), ("siglip", "qwen2"), ("clip", "gpt2")]  # (vision family, LLM family)
VOCAB = 128  # the vocabulary of `tiny_hive_config` without a tokenizer
CORPUS = ["a red circle and a blue square .", "what colour is the circle ? red", "how many shapes are there ? 2"]


def build(pair=("vit", "llama"), seed=0, gate=None, **hive_kwargs):
    """A tiny HIVE model in eval mode with a 128-word vocabulary; `gate`, when given, is every `*_gate`'s value."""
    torch.manual_seed(seed)
    model = HiveForConditionalGeneration(tiny_hive_config(*pair, **hive_kwargs)).eval()
    if gate is not None:
        open_gates(model, gate)
    return model


def open_gates(model, value):
    with torch.no_grad():
        for block in model.model.cross_attention_layers:
            block.cross_attn_attn_gate.fill_(value)
            block.cross_attn_mlp_gate.fill_(value)


def inputs(batch=2, length=7, seed=1):
    """(input_ids in [3, 128), 32x32 pixel_values), drawn from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    return input_ids, pixel_values


def tiny_processor(corpus=CORPUS):
    """A HiveProcessor: a 32x32 ViT image processor and a word tokenizer built from `corpus`."""
    return HiveProcessor(ViTImageProcessorPil(size={"height": 32, "width": 32}), build_tokenizer(corpus))


def tiny_model(processor, seed=0, **hive_kwargs):
    """A ViT + Llama HIVE model (train mode) whose vocabulary and pad/bos/eos ids are `processor.tokenizer`'s."""
    torch.manual_seed(seed)
    return HiveForConditionalGeneration(tiny_hive_config("vit", "llama", tokenizer=processor.tokenizer, **hive_kwargs))
