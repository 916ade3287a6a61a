"""HIVE's `shared_softmax` mode, the paper authors' fusion (issue 19): image keys/values joined to the connected LLM
layers' own self-attention. The family matrix (`tests/family_compatibility.py`, kind `shared_softmax`) runs every LLM
family through it; these tests pin the mechanism and the workflows on Llama."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveForConditionalGeneration
from modeling_hive.shared_softmax_hive import (
    HiveImageKeyValues,
    apply_rotary,
    grid_positions,
    hive_sdpa_attention_forward,
    image_rotary_embeddings,
)
from tiny_hive import build as build_tiny, inputs


REPO = Path(__file__).resolve().parents[1]


def build(seed=0, text_family="llama", **kwargs):
    """A tiny ViT + `text_family` HIVE model in shared_softmax mode, in eval mode."""
    return build_tiny(("vit", text_family), seed, cross_attention_mode="shared_softmax", **kwargs)


def bare_llm(model):
    lm = AutoModelForCausalLM.from_config(LlamaConfig(**{**model.config.text_config.to_dict(), "attn_implementation": "sdpa"})).eval()
    lm.get_decoder().load_state_dict(model.model.language_model.state_dict())
    lm.get_output_embeddings().load_state_dict(model.lm_head.state_dict())
    return lm


class Attention(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


def rms_norm(states, weight):
    return weight * states / states.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


@pytest.mark.parametrize("past", [0, 3])
@pytest.mark.parametrize("boolean_mask", [False, True])
@pytest.mark.parametrize("norm", ["image_keys", "queries_and_keys"])
def test_one_softmax_over_the_text_keys_and_the_image_keys(past, boolean_mask, norm):
    """The attention function against a hand-written softmax over [text keys, image keys]: causal over the text (past
    keys included), every image key visible to every query of a sample with an image, none to one without. With
    `queries_and_keys`, the queries and the text keys (past ones included) of the sample with an image go through the
    block's RMSNorms first, as the authors' code does after the rotation; the sample without one stays the LLM's."""
    from modeling_hive.shared_softmax_hive import HiveSharedSoftmaxLayer

    torch.manual_seed(0)
    batch, heads, kv_heads, queries, images, dim = 2, 4, 2, 3, 5, 8
    decoder = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=32, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                                           head_dim=dim, num_hidden_layers=1, intermediate_size=16, vocab_size=16))  # fmt: skip
    block = HiveSharedSoftmaxLayer(decoder.model.layers[0], dim, 1e-6, norm)
    with torch.no_grad():
        block.k_norm.weight.uniform_(0.5, 1.5)
        if block.q_norm is not None:
            block.q_norm.weight.uniform_(0.5, 1.5)
    query = torch.randn(batch, heads, queries, dim)
    key, value = torch.randn(batch, kv_heads, past + queries, dim), torch.randn(batch, kv_heads, past + queries, dim)
    image_keys, image_values = torch.randn(batch, kv_heads, images, dim), torch.randn(batch, kv_heads, images, dim)
    image_mask = torch.tensor([True, False])
    causal = torch.arange(past + queries)[None, :] <= torch.arange(past, past + queries)[:, None]  # (T, S)
    mask = None
    if boolean_mask:
        mask = causal[None, None].expand(batch, 1, queries, past + queries)
    else:  # None stands for sdpa's own is_causal: torch's upper-left alignment (a static cache's prefill, empty slots after)
        causal = torch.arange(past + queries)[None, :] <= torch.arange(queries)[:, None]
    image = HiveImageKeyValues(0, image_keys, image_values, image_mask, set(), block)
    output, _ = hive_sdpa_attention_forward(Attention(), query, key, value, mask, scaling=dim**-0.5, hive_image_key_values=image)

    if norm == "queries_and_keys":
        with torch.no_grad():
            query = torch.cat([rms_norm(query[:1], block.q_norm.weight), query[1:]])
            key = torch.cat([rms_norm(key[:1], block.k_norm.weight), key[1:]])
    all_keys = torch.cat([key, image_keys], 2).repeat_interleave(2, dim=1)
    all_values = torch.cat([value, image_values], 2).repeat_interleave(2, dim=1)
    allowed = torch.cat([causal.expand(batch, 1, queries, past + queries), image_mask[:, None, None, None].expand(batch, 1, queries, images)], -1)
    scores = (query @ all_keys.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~allowed, float("-inf"))
    expected = (F.softmax(scores, dim=-1) @ all_values).transpose(1, 2)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert image.consumed == {0}


def rotate_half(states):
    first, second = states.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def authors_multimodal_rotary(keys, cos, sin, head_dim):
    """The authors' `apply_multimodal_rotary_pos_emb` (eugenelet/HIVE, llava_next/model/language_model/paidge_llama.py),
    written again from its description: `cos`/`sin` `(3, B, N, head_dim)` are Llama's (two halves of the frequencies,
    fastest first) at the positions (row, column, side // 2); each half is split [3, 3, 2] * head_dim / 16; the first
    two sections of a half (its fastest 6/8) become the row at their even frequencies followed by the column at their
    odd ones, and the third section takes the constant component; the keys turn by rotate-half."""
    sections = [3 * head_dim // 16, 3 * head_dim // 16, 2 * head_dim // 16] * 2

    def reassemble(values):
        parts = values.split(sections, dim=-1)
        halves = []
        for grid, constant in ((torch.cat(parts[0:2], -1), parts[2]), (torch.cat(parts[3:5], -1), parts[5])):
            halves += [grid[0, ..., 0::2], grid[1, ..., 1::2], constant[2]]
        return torch.cat(halves, dim=-1)[:, None]  # (B, 1, N, head_dim)

    cos, sin = reassemble(cos), reassemble(sin)
    return keys * cos + rotate_half(keys) * sin


@pytest.mark.parametrize(
    "model_type, style",
    [("llama", (True, False)), ("cohere", (False, True)), ("glm", (True, True)), ("llama-yarn", (True, False))],
)
def test_image_keys_rotate_as_the_authors_multimodal_rotary_in_the_llms_own_pairing(model_type, style):
    """Image keys of two levels (a 4x4 grid, then CLS and a 3x3 grid) against the authors' function above, fed the
    LLM's own frequencies: Llama pairs halves, Cohere neighbours, GLM lays cos out in halves but pairs neighbours (and
    rotates half the head only); YaRN scales every rotated dim. A neighbour-paired LLM's pair k (dims 2k, 2k + 1) must
    turn as the authors turn pair k (dims k, k + pairs); a CLS token sits at row 0, column 0."""
    from transformers import AutoConfig, AutoModel

    from modeling_hive.shared_softmax_hive import probe_rotary

    rows, columns = grid_positions(1 + 9, "cpu")
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2] and columns.tolist() == [0, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    sizes = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1, intermediate_size=32, vocab_size=32,
                 head_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "llama-yarn":
        sizes["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 64}
    llm = AutoModel.from_config(AutoConfig.for_model(model_type.split("-")[0], **sizes)).eval()
    assert probe_rotary(llm, [0], llm.layers)[0] == style
    halves_layout, neighbours = style
    levels = [16, 10]
    keys = torch.randn(1, 2, sum(levels), 32)
    cos, sin = image_rotary_embeddings(llm.rotary_emb, levels, keys, None, halves_layout)
    ours = apply_rotary(keys, cos, sin, neighbours)
    pairs = cos.shape[-1]
    rotated = 2 * pairs  # GLM rotates half of its head
    assert (model_type == "glm") == (rotated < 32)
    start = 0
    for size in levels:
        side = math.isqrt(size)
        row, column = grid_positions(size, "cpu")
        positions = torch.stack([row, column, torch.full_like(row, side // 2)])[:, None]  # (3, 1, n)
        cos_llm, sin_llm = llm.rotary_emb(keys, positions.flatten(1))  # (1, 3n, rotary dims) in the LLM's layout
        per_pair = (lambda t: t[..., :pairs]) if halves_layout else (lambda t: t[..., 0::2])
        cos3, sin3 = (torch.cat([per_pair(t), per_pair(t)], -1).view(3, 1, size, rotated) for t in (cos_llm, sin_llm))
        level = keys[:, :, start : start + size, :rotated]
        if neighbours:  # into the authors' pairing (dims k, k + pairs), and back
            level = torch.cat([level[..., 0::2], level[..., 1::2]], dim=-1)
        theirs = authors_multimodal_rotary(level, cos3, sin3, rotated)
        if neighbours:
            theirs = torch.stack([theirs[..., :pairs], theirs[..., pairs:]], dim=-1).flatten(-2)
        torch.testing.assert_close(ours[:, :, start : start + size, :rotated], theirs)
        assert torch.equal(ours[:, :, start : start + size, rotated:], keys[:, :, start : start + size, rotated:])
        start += size


def test_on_the_study_llm_image_keys_turn_by_row_and_column_at_the_fast_frequencies():
    """The study's tiny Llama (head_dim 16, theta 1e4) and an 8x8 grid: row 7 turns pair 0 by 7 rad, column 7 turns
    pair 3 by 7 * 10**-0.5 rad (the layout before the authors' put the grid on the slowest pairs: 0.22 and 0.007 rad)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from modeling_hive.shared_softmax_hive import image_rotary_pairs

    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, rope_theta=10000.0))
    cos, sin = image_rotary_embeddings(rotary, [64], torch.zeros(1), None, True)
    angle = torch.atan2(sin, cos)[0]  # (64, 8), wrapped to (-pi, pi]
    component, frequency = image_rotary_pairs(8)
    assert component.tolist() == [0, 0, 0, 1, 1, 1, 2, 2] and frequency.tolist() == [0, 2, 4, 1, 3, 5, 6, 7]
    assert math.isclose(angle[7 * 8, 0].item(), math.remainder(7.0, 2 * math.pi), abs_tol=1e-5)  # row 7, column 0
    assert math.isclose(angle[7, 3].item(), 7 * 10**-0.5, abs_tol=1e-5)  # row 0, column 7
    assert angle[7, 0].item() == 0 and angle[7 * 8, 3].item() == 0
    torch.testing.assert_close(angle[:, 6], torch.full((64,), 4 * 10**-3.0))  # side // 2 at pair 6's frequency


@pytest.mark.parametrize("norm", ["image_keys", "queries_and_keys"])
def test_without_an_image_the_model_is_exactly_the_llm_and_the_image_matters(norm):
    model = build(shared_softmax_norm=norm)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        text_only = model(input_ids=input_ids).logits
        llm = bare_llm(model)(input_ids=input_ids).logits
        with_image = model(input_ids=input_ids, pixel_values=pixel_values).logits
        again = model(input_ids=input_ids, pixel_values=pixel_values).logits
        other = model(input_ids=input_ids, pixel_values=torch.randn_like(pixel_values)).logits
        mixed = model(input_ids=input_ids, pixel_values=pixel_values, image_mask=torch.tensor([True, False])).logits
    torch.testing.assert_close(text_only, llm, atol=1e-5, rtol=1e-4)
    assert torch.equal(with_image, again) and not torch.allclose(with_image, other, atol=1e-4)
    torch.testing.assert_close(mixed[0], with_image[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[1], text_only[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hierarchy_mode, norm", [("paired", "image_keys"), ("all_levels", "image_keys"), ("paired", "queries_and_keys"),
                                                  ("all_levels", "queries_and_keys")])  # fmt: skip
def test_generate_with_the_cache_equals_without_and_padding_leaves_real_tokens_unchanged(hierarchy_mode, norm):
    model = build(hierarchy_mode=hierarchy_mode, shared_softmax_norm=norm)
    input_ids, pixel_values = inputs()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # left padding
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, max_new_tokens=5,
                  min_new_tokens=5, do_sample=False, pad_token_id=0, image_mask=torch.tensor([True, False]))  # fmt: skip
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))
    with torch.no_grad():
        padded = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits[1, 2:]
        alone = model(input_ids=input_ids[1:, 2:], pixel_values=pixel_values[1:]).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", ["image_keys", "queries_and_keys"])
def test_image_projections_start_as_the_layers_own_and_every_block_parameter_learns(tmp_path, norm):
    donor = build(seed=3)  # its LLM and encoder, saved as the backbones' own checkpoints
    bare_llm(donor).save_pretrained(tmp_path / "text")
    donor.model.vision_model.save_pretrained(tmp_path / "vision")
    torch.manual_seed(7)  # HIVE's own weights from another seed than the LLM's
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "vision"), str(tmp_path / "text"),
                                                        cross_attention_layers=[[1, 1], [3, 3]], cross_attention_mode="shared_softmax",
                                                        shared_softmax_norm=norm)  # fmt: skip
    layers = model.model.language_model.layers
    for block, (_, text_layer) in zip(model.model.cross_attention_layers, model.config.cross_attention_layers):
        attention = layers[text_layer].self_attn
        assert torch.equal(block.k_proj.weight, attention.k_proj.weight) and block.k_proj.weight is not attention.k_proj.weight
        assert torch.equal(block.v_proj.weight, attention.v_proj.weight)
        assert torch.equal(block.input_layernorm.weight, layers[text_layer].input_layernorm.weight)
    model.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)  # stage 2
    input_ids, pixel_values = inputs()
    model.train()
    model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
    fusion = [*model.model.multi_modal_projectors.named_parameters(), *model.model.cross_attention_layers.named_parameters()]
    assert not [name for name, p in fusion if p.grad is None or not p.grad.any()]
    assert any(".q_norm." in name for name, _ in fusion) == (norm == "queries_and_keys")
    assert all(p.grad is None for p in model.model.language_model.parameters())
    for projector in model.model.multi_modal_projectors:  # queries_and_keys: the authors' Xavier-uniform init
        for linear in (projector.linear_1, projector.linear_2):
            bound = math.sqrt(6 / (linear.in_features + linear.out_features))
            xavier = linear.weight.abs().max() <= bound and linear.weight.std() > 0.8 * bound / math.sqrt(3)
            assert xavier == (norm == "queries_and_keys")
            assert (norm == "image_keys") or not linear.bias.any()


def test_the_llm_must_run_sdpa_and_have_separate_key_value_projections():
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        config = tiny_hive_config("vit", "llama", cross_attention_mode="shared_softmax")
        HiveForConditionalGeneration._from_config(config, attn_implementation="eager")
    with pytest.raises(ValueError, match="fused QKV"):
        build(text_family="gpt2")
    with pytest.raises(ValueError, match="cross_attention_mode must be one of"):
        tiny_hive_config("vit", "llama", cross_attention_mode="joint")
    model = build()
    with pytest.raises(ValueError, match="cannot run as 'eager'"):
        model.set_attn_implementation("eager")
    model.set_attn_implementation("sdpa")
    input_ids, pixel_values = inputs()
    model(input_ids=input_ids, pixel_values=pixel_values)
    with pytest.raises(ValueError, match="output_cross_attentions needs the gated"):
        model(input_ids=input_ids, pixel_values=pixel_values, output_cross_attentions=True)
    with pytest.raises(ValueError, match="square patch grid"):  # rows and columns would be guessed wrongly
        model(input_ids=input_ids, pixel_values=torch.randn(2, 3, 32, 64))
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant"):
        model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids)
    model.gradient_checkpointing_enable()  # transformers' default, non-reentrant: trains
    model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
    model.gradient_checkpointing_disable()
    model.eval()
    # Anything that swaps the LLM's attention function behind HIVE's back is caught at the next forward.
    model.model.language_model.config._attn_implementation_internal = "sdpa"
    with pytest.raises(RuntimeError, match="the image would be ignored"):
        model(input_ids=input_ids, pixel_values=pixel_values)
    # LoRA on the LLM's k/v projections (PEFT wraps them) does not stop set_attn_implementation from restoring it.
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=2, target_modules=["k_proj", "v_proj"]), model.model.language_model)
    model.set_attn_implementation("sdpa")
    model(input_ids=input_ids, pixel_values=pixel_values)


@pytest.mark.slow
def test_hive_train_runs_the_three_stages_with_lora_and_the_final_model_loads_as_remote_code(tmp_path):
    run = tmp_path / "run"
    small = ["data.shapes.num_train=64", "stage1.max_steps=3", "stage2.max_steps=3", "stage3.max_steps=3"]
    command = [sys.executable, "-m", "hive_vlm.cli", "train", "--recipe", "recipes/tiny-shapes.yaml", "--output-dir", str(run),
               *small, "model.hive.cross_attention_mode=shared_softmax"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stage2, final = (load_file(run / folder / "model.safetensors") for folder in ("stage2/model", "final"))
    name = "model.cross_attention_layers.0.k_proj.weight"
    llm_name = "model.language_model.layers.1.self_attn.k_proj.weight"
    assert not torch.equal(stage2[name], stage2[llm_name])  # the image projection trained in stage 2, the LLM did not
    assert (run / "stage3" / "adapter").is_dir()
    assert not torch.equal(final["model.language_model.layers.1.self_attn.q_proj.weight"], stage2["model.language_model.layers.1.self_attn.q_proj.weight"])
    script = (
        "import torch; from transformers import AutoModelForImageTextToText as A\n"
        f"m = A.from_pretrained({str(run / 'final')!r}, trust_remote_code=True).eval()\n"
        "assert type(m).__module__.startswith('transformers_modules.'), type(m).__module__\n"
        "assert m.config.cross_attention_mode == 'shared_softmax'\n"
        "torch.manual_seed(0); ids = torch.randint(3, 20, (2, 6)); px = torch.randn(2, 3, 32, 32)\n"
        "k = dict(input_ids=ids, pixel_values=px, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)\n"
        "assert torch.equal(m.generate(**k), m.generate(**k, use_cache=False))\n"
        "with torch.no_grad(): a, b = (m(input_ids=ids, pixel_values=p).logits for p in (px, torch.randn_like(px)))\n"
        "assert not torch.allclose(a, b)\n"
    )
    checked = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})  # fmt: skip
    assert checked.returncode == 0, checked.stderr[-3000:]
