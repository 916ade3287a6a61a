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


REPO = Path(__file__).resolve().parents[1]
VOCAB = 128


def build(seed=0, text_family="llama", **kwargs):
    torch.manual_seed(seed)
    config = tiny_hive_config("vit", text_family, cross_attention_mode="shared_softmax", **kwargs)
    return HiveForConditionalGeneration(config).eval()


def inputs(batch=2, length=7, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator), torch.randn(batch, 3, 32, 32, generator=generator)


def bare_llm(model):
    lm = AutoModelForCausalLM.from_config(LlamaConfig(**{**model.config.text_config.to_dict(), "attn_implementation": "sdpa"})).eval()
    lm.get_decoder().load_state_dict(model.model.language_model.state_dict())
    lm.get_output_embeddings().load_state_dict(model.lm_head.state_dict())
    return lm


class Attention(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


@pytest.mark.parametrize("past", [0, 3])
@pytest.mark.parametrize("boolean_mask", [False, True])
def test_one_softmax_over_the_text_keys_and_the_image_keys(past, boolean_mask):
    """The attention function against a hand-written softmax over [text keys, image keys]: causal over the text (past
    keys included), every image key visible to every query of a sample with an image, none to one without."""
    torch.manual_seed(0)
    batch, heads, kv_heads, queries, images, dim = 2, 4, 2, 3, 5, 8
    query = torch.randn(batch, heads, queries, dim)
    key, value = torch.randn(batch, kv_heads, past + queries, dim), torch.randn(batch, kv_heads, past + queries, dim)
    image_keys, image_values = torch.randn(batch, kv_heads, images, dim), torch.randn(batch, kv_heads, images, dim)
    image_mask = torch.tensor([True, False])
    causal = torch.arange(past + queries)[None, :] <= torch.arange(past, past + queries)[:, None]  # (T, S)
    mask = None
    if boolean_mask:
        mask = causal[None, None].expand(batch, 1, queries, past + queries)
    image = HiveImageKeyValues(0, image_keys, image_values, image_mask, set())
    output, _ = hive_sdpa_attention_forward(Attention(), query, key, value, mask, scaling=dim**-0.5, hive_image_key_values=image)

    all_keys = torch.cat([key, image_keys], 2).repeat_interleave(2, dim=1)
    all_values = torch.cat([value, image_values], 2).repeat_interleave(2, dim=1)
    allowed = torch.cat([causal.expand(batch, 1, queries, past + queries), image_mask[:, None, None, None].expand(batch, 1, queries, images)], -1)
    scores = (query @ all_keys.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~allowed, float("-inf"))
    expected = (F.softmax(scores, dim=-1) @ all_values).transpose(1, 2)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    assert image.consumed == {0}


@pytest.mark.parametrize(
    "model_type, style",
    [("llama", (True, False)), ("cohere", (False, True)), ("glm", (True, True)), ("llama-yarn", (True, False))],
)
def test_image_keys_rotate_as_the_llm_rotates_its_own_keys(model_type, style):
    """Row and column positions through the LLM's own rotary embedding and its own `apply_rotary_pos_emb`: Llama pairs
    halves, Cohere neighbours, GLM lays cos out in halves but pairs neighbours (and rotates half the head only);
    YaRN scales every rotated dim. A token at row r is rotated in the row frequencies as the LLM rotates a key at
    position r; the sequence frequencies as at position 0; tokens before the grid (CLS) sit at row 0."""
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
    apply = sys.modules[type(llm.layers[0].self_attn).__module__].apply_rotary_pos_emb
    keys = torch.randn(1, 2, 10, 32)
    cos, sin = image_rotary_embeddings(llm.rotary_emb, [10], keys, None, halves_layout)
    ours = apply_rotary(keys, cos, sin, neighbours)
    pairs = cos.shape[-1]
    pair = (torch.arange(2 * pairs) // 2 if neighbours else torch.arange(2 * pairs) % pairs)
    sequence, row = pair < round(pairs * 3 / 8), (pair >= round(pairs * 3 / 8)) & (pair < round(pairs * 6 / 8))
    for token, position in ((0, 0), (4, 1), (7, 2)):
        key = keys[:, :, token : token + 1]
        theirs = {p: apply(key, key, *llm.rotary_emb(key, torch.tensor([[p]])))[1][:, :, 0] for p in (0, position)}
        torch.testing.assert_close(ours[:, :, token, : 2 * pairs][..., row], theirs[position][..., : 2 * pairs][..., row])
        torch.testing.assert_close(ours[:, :, token, : 2 * pairs][..., sequence], theirs[0][..., : 2 * pairs][..., sequence])
        assert torch.equal(ours[:, :, token, 2 * pairs :], keys[:, :, token, 2 * pairs :])  # partial rotary: the rest as is


def test_without_an_image_the_model_is_exactly_the_llm_and_the_image_matters():
    model = build()
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


@pytest.mark.parametrize("hierarchy_mode", ["paired", "all_levels"])
def test_generate_with_the_cache_equals_without_and_padding_leaves_real_tokens_unchanged(hierarchy_mode):
    model = build(hierarchy_mode=hierarchy_mode)
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


def test_image_projections_start_as_the_layers_own_and_every_block_parameter_learns(tmp_path):
    donor = build(seed=3)  # its LLM and encoder, saved as the backbones' own checkpoints
    bare_llm(donor).save_pretrained(tmp_path / "text")
    donor.model.vision_model.save_pretrained(tmp_path / "vision")
    torch.manual_seed(7)  # HIVE's own weights from another seed than the LLM's
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "vision"), str(tmp_path / "text"),
                                                        cross_attention_layers=[[1, 1], [3, 3]], cross_attention_mode="shared_softmax")  # fmt: skip
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
    assert all(p.grad is None for p in model.model.language_model.parameters())


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
