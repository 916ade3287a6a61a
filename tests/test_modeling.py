"""HiveConfig, HiveModel and HiveForConditionalGeneration: what users of the model rely on (issue 2)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CONFIG_MAPPING,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPConfig,
    CLIPModel,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    ViTForImageClassification,
    ViTModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hive_vlm.tiny import tiny_hive_config, tiny_text_config, tiny_vision_config
from isolated import run_isolated
from modeling_hive import HiveConfig, HiveForConditionalGeneration, HiveModel
from modeling_hive.compatibility_hive import CACHE_NAME
from modeling_hive.modeling_hive import HiveCrossAttentionCacheLayer
from tiny_hive import PAIRS, VOCAB, build, inputs, open_gates


def bare_llm(model):
    """The LLM alone, with the HIVE model's LLM weights."""
    lm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    lm.get_decoder().load_state_dict(model.model.language_model.state_dict())
    lm.get_output_embeddings().load_state_dict(model.lm_head.state_dict())
    return lm


# ----------------------------------------------------------------------------------------------------- config


def test_config_default_pairs_are_spread_over_both_depths():
    config = HiveConfig(
        vision_config=tiny_vision_config("vit", num_layers=12).to_dict(),
        text_config=tiny_text_config("llama", num_layers=24).to_dict(),
    )
    assert config.cross_attention_layers == [[2, 5], [5, 11], [8, 17], [11, 23]]
    assert config.vision_layers == [2, 5, 8, 11]
    # heads follow the LLM, grouped like it (the tiny Llama has 2 query heads and 1 key/value head)
    assert config.cross_attention_num_heads == 2 and config.cross_attention_num_key_value_heads == 1
    explicit = HiveConfig(vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(), cross_attention_num_heads=4)
    assert explicit.cross_attention_num_key_value_heads == 4
    gpt2 = tiny_hive_config("clip", "gpt2")  # GPT-2 has no grouped heads
    assert gpt2.cross_attention_num_key_value_heads == gpt2.cross_attention_num_heads == 2
    assert config.gate_init == 0.0


def test_config_round_trips_through_dict_and_json(tmp_path):
    config = tiny_hive_config("clip", "gpt2", hierarchy_mode="all_levels", cross_attention_layers=[[3, 0], [0, 2]])
    config.save_pretrained(tmp_path)
    loaded = HiveConfig.from_pretrained(tmp_path)
    assert loaded.cross_attention_layers == [[3, 0], [0, 2]]  # sorted by LLM layer
    assert loaded.hierarchy_mode == "all_levels"
    assert type(loaded.vision_config).__name__ == "CLIPVisionConfig"
    assert type(loaded.text_config).__name__ == "GPT2Config"
    assert loaded.tie_word_embeddings is True  # GPT-2 ties its head; HIVE follows the LLM


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cross_attention_layers": [[4, 1]]}, "vision layer 4 is out of range"),
        ({"cross_attention_layers": [[1, 9]]}, "text layer 9 is out of range"),
        ({"cross_attention_layers": [[-1, 1]]}, "vision layer -1 is out of range"),
        ({"cross_attention_layers": [[1, 1], [2, 1]]}, "text layer(s) [1] used more than once"),
        ({"cross_attention_layers": [[1, 1, 1]]}, "cross_attention_layers entries"),
        ({"cross_attention_layers": []}, "at least one"),
        ({"cross_attention_num_heads": 3}, "cross_attention_num_heads (3) must divide the LLM width (32)"),
        ({"cross_attention_num_heads": 4, "cross_attention_num_key_value_heads": 3}, "cross_attention_num_key_value_heads"),
        ({"hierarchy_mode": "pyramid"}, "hierarchy_mode must be one of"),
        ({"cross_attention_layers": None, "num_cross_attention_layers": 9}, "num_cross_attention_layers"),
        ({"cross_attention_dropout": 1.5}, "cross_attention_dropout"),
    ],
)
def test_config_rejects_invalid_settings_naming_the_field(kwargs, field):
    with pytest.raises(ValueError) as error:
        tiny_hive_config("vit", "llama", **kwargs)
    assert field in str(error.value)


# ----------------------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("pair", PAIRS)
def test_backbone_parameter_names_are_those_of_their_own_checkpoints(pair):
    model = build(pair)
    vision = ViTModel if pair[0] == "vit" else None
    names = {name for name, _ in model.named_parameters()}
    lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm_prefix = lm.base_model_prefix
    expected_llm = {f"model.language_model.{name.split('.', 1)[1]}" for name, _ in lm.named_parameters() if name.startswith(lm_prefix + ".")}
    assert expected_llm <= names
    encoder_names = {f"model.vision_model.{name}" for name, _ in model.model.vision_model.named_parameters()}
    assert encoder_names <= names
    if vision is not None:
        plain = vision(model.config.vision_config)
        assert {f"model.vision_model.{n}" for n, _ in plain.named_parameters()} == encoder_names
    # the LLM's decoder layers are its own, unwrapped classes
    assert type(model.model.language_model).__name__ == type(lm.get_decoder()).__name__


@pytest.mark.parametrize("pair", PAIRS)
def test_closed_gates_give_the_bare_llm_logits(pair):
    model = build(pair)
    assert all(b.cross_attn_attn_gate.item() == 0.0 and b.cross_attn_mlp_gate.item() == 0.0 for b in model.model.cross_attention_layers)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        hive = model(input_ids=input_ids, pixel_values=pixel_values).logits
        plain = bare_llm(model)(input_ids=input_ids).logits
    torch.testing.assert_close(hive, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pair", PAIRS)
def test_open_gates_make_the_image_change_the_logits(pair):
    model = build(pair, gate=1.0)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        first = model(input_ids=input_ids, pixel_values=pixel_values).logits
        second = model(input_ids=input_ids, pixel_values=torch.flip(pixel_values, dims=[0])).logits
    assert (first - second).abs().max() > 1e-4


@pytest.mark.parametrize("pair", PAIRS)
def test_text_only_input_equals_the_llm_even_with_open_gates(pair):
    model = build(pair, gate=1.0)
    input_ids, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, bare_llm(model)(input_ids=input_ids).logits, atol=1e-5, rtol=0)


def test_all_levels_mode_attends_to_every_level_with_level_embeddings():
    model = build(("vit", "llama"), gate=1.0, hierarchy_mode="all_levels", cross_attention_layers=[[0, 0], [2, 2], [3, 3]])
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, output_cross_attentions=True)
    patches = (32 // 8) ** 2 + 1
    assert model.model.level_embeddings.shape == (3, 32)
    assert [tuple(a.shape) for a in out.cross_attentions] == [(2, 2, 7, 3 * patches)] * 3
    paired = build(("vit", "llama"), gate=1.0, cross_attention_layers=[[0, 0], [2, 2], [3, 3]])
    with torch.no_grad():
        out = paired(input_ids=input_ids, pixel_values=pixel_values, output_cross_attentions=True)
    assert [tuple(a.shape) for a in out.cross_attentions] == [(2, 2, 7, patches)] * 3
    assert paired.model.level_embeddings is None


def test_eager_and_sdpa_agree():
    config = tiny_hive_config("siglip", "qwen2")
    torch.manual_seed(0)
    eager = HiveForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    sdpa = HiveForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    open_gates(eager, 0.7)
    open_gates(sdpa, 0.7)
    assert sdpa.model.cross_attention_layers[0].cross_attn.config._attn_implementation == "sdpa"
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            eager(input_ids=input_ids, pixel_values=pixel_values).logits,
            sdpa(input_ids=input_ids, pixel_values=pixel_values).logits,
            atol=1e-5,
            rtol=1e-5,
        )


# ------------------------------------------------------------------------------------------ inputs/outputs


def test_image_mask_mixes_samples_with_and_without_an_image():
    model = build(gate=1.0)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        mixed = model(input_ids=input_ids, pixel_values=pixel_values, image_mask=torch.tensor([True, False])).logits
        with_image = model(input_ids=input_ids, pixel_values=pixel_values).logits
        text_only = model(input_ids=input_ids).logits
    torch.testing.assert_close(mixed[0], with_image[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], text_only[1], atol=1e-5, rtol=0)
    assert (mixed[1] - with_image[1]).abs().max() > 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pair", PAIRS)
def test_padding_on_either_side_leaves_real_tokens_unchanged(pair, side):
    model = build(pair, gate=1.0)
    input_ids, pixel_values = inputs(batch=2, length=6)
    short = input_ids[1, :4]
    pad = torch.zeros(2, dtype=torch.long)
    padded_row = torch.cat([pad, short]) if side == "left" else torch.cat([short, pad])
    mask_row = torch.tensor([0, 0, 1, 1, 1, 1] if side == "left" else [1, 1, 1, 1, 0, 0])
    batch_ids = torch.stack([input_ids[0], padded_row])
    batch_mask = torch.stack([torch.ones(6, dtype=torch.long), mask_row])
    with torch.no_grad():
        batched = model(input_ids=batch_ids, attention_mask=batch_mask, pixel_values=pixel_values).logits
        alone = model(input_ids=short[None], pixel_values=pixel_values[1:]).logits[0]
    real = batched[1, 2:] if side == "left" else batched[1, :4]
    torch.testing.assert_close(real, alone, atol=1e-4, rtol=1e-4)


def test_loss_ignores_minus_100_and_is_never_nan_when_all_labels_are_ignored():
    model = build(gate=1.0)
    model.train()
    input_ids, pixel_values = inputs()
    labels = torch.full_like(input_ids, -100)
    out = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    labels = input_ids.clone()
    labels[:, :4] = -100
    out = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, VOCAB)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_output_carries_vision_features_and_cross_attentions_on_request():
    model = build(gate=1.0, cross_attention_layers=[[0, 1], [3, 2]])
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        plain = model(input_ids=input_ids, pixel_values=pixel_values)
        full = model(input_ids=input_ids, pixel_values=pixel_values, output_vision_features=True, output_cross_attentions=True)
        encoder = model.model.vision_model(pixel_values, output_hidden_states=True).hidden_states
    assert plain.vision_hidden_states is None and plain.cross_attentions is None
    assert set(plain.keys()) >= {"logits", CACHE_NAME}
    assert len(full.vision_hidden_states) == 2
    torch.testing.assert_close(full.vision_hidden_states[0], encoder[1])  # encoder layer 0's output
    torch.testing.assert_close(full.vision_hidden_states[1], encoder[4])  # encoder layer 3's output
    for weights in full.cross_attentions:
        assert weights.shape == (2, 2, 7, 17)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))
    torch.testing.assert_close(full.logits, plain.logits)  # asking for weights (eager) changes nothing


# ------------------------------------------------------------------------------------------------ hub-native


def save_tiny(tmp_path, pair=("vit", "llama")):
    model = build(pair, gate=0.8)
    folder = tmp_path / "hive"
    model.save_pretrained(folder)
    return model, folder


def test_save_pretrained_writes_safetensors_auto_map_and_code(tmp_path):
    _, folder = save_tiny(tmp_path)
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "generation_config.json", "configuration_hive.py", "modeling_hive.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "hive"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hive.HiveConfig",
        "AutoModel": "modeling_hive.HiveForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_hive.HiveForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_hive.HiveForConditionalGeneration",
    }


@pytest.mark.parametrize("pair", [("vit", "llama"), ("clip", "gpt2")])
def test_fresh_offline_process_loads_remote_code_and_reproduces_logits(tmp_path, pair):
    model, folder = save_tiny(tmp_path, pair)
    input_ids, pixel_values = inputs()
    torch.save({"input_ids": input_ids, "pixel_values": pixel_values}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixel_values).logits
    code = f"""
        import json, torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
        data = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**data).logits
        base = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        causal = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        print(json.dumps({{"module": type(model).__module__, "cls": type(model).__name__,
                           "base": type(base).__name__, "causal": type(causal).__name__}}))
    """
    result = run_isolated(code, str(tmp_path))
    assert result["module"].startswith("transformers_modules") and result["cls"] == "HiveForConditionalGeneration"
    assert result["base"] == "HiveForConditionalGeneration" and result["causal"] == "HiveForConditionalGeneration"
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), expected)


def test_gates_missing_from_a_checkpoint_get_gate_init(tmp_path):
    model, folder = save_tiny(tmp_path)
    weights = load_file(folder / "model.safetensors")
    kept = {name: tensor for name, tensor in weights.items() if "_gate" not in name}
    assert len(kept) == len(weights) - 4
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = HiveForConditionalGeneration.from_pretrained(folder, gate_init=0.25)
    for block in loaded.model.cross_attention_layers:
        assert block.cross_attn_attn_gate.item() == 0.25 and block.cross_attn_mlp_gate.item() == 0.25
    # everything that was in the checkpoint is exactly as saved
    assert torch.equal(loaded.model.cross_attention_layers[0].cross_attn.q_proj.weight, model.model.cross_attention_layers[0].cross_attn.q_proj.weight)


def test_weights_are_only_read_and_written_as_safetensors(tmp_path):
    model, folder = save_tiny(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        HiveForConditionalGeneration.from_pretrained(folder, use_safetensors=False)
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "other", safe_serialization=False)
    (folder / "model.safetensors").rename(folder / "elsewhere.safetensors")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError):
        HiveForConditionalGeneration.from_pretrained(folder)  # a pickle is never taken instead


def test_from_backbones_loads_pretrained_encoder_and_llm_without_missing_keys(tmp_path):
    torch.manual_seed(3)
    vit = ViTModel(tiny_vision_config("vit"))
    vit.save_pretrained(tmp_path / "vit")
    llama = LlamaForCausalLM(tiny_text_config("llama"))
    llama.save_pretrained(tmp_path / "llama")
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "vit"), str(tmp_path / "llama"), cross_attention_layers=[[1, 1], [3, 3]])
    for name, tensor in vit.state_dict().items():
        assert torch.equal(model.model.vision_model.state_dict()[name], tensor), name
    for name, tensor in llama.model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[name], tensor), name
    assert torch.equal(model.lm_head.weight, llama.lm_head.weight)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids, pixel_values=pixel_values).logits, llama(input_ids).logits, atol=1e-5, rtol=0)


def test_an_llm_whose_decoder_layers_sit_deeper_works_exactly(tmp_path):
    # OPT keeps its layers in `decoder.layers`, one level below its base model.
    ViTModel(tiny_vision_config("vit")).save_pretrained(tmp_path / "vit")
    text = CONFIG_MAPPING["opt"](vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32)
    AutoModelForCausalLM.from_config(text).save_pretrained(tmp_path / "opt")
    # from_backbones itself checks that closed gates give the OPT's own logits.
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "vit"), str(tmp_path / "opt"), cross_attention_layers=[[1, 1], [3, 3]])
    open_gates(model.eval(), 1.0)
    input_ids, pixel_values = inputs()
    kwargs = dict(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(**kwargs), model.generate(**kwargs, use_cache=False))
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=input_ids, pixel_values=pixel_values).logits, model(input_ids=input_ids).logits)


def test_from_backbones_needs_only_the_encoder_weights_hive_uses(tmp_path):
    # An encoder saved without a pooler, and one inside a classification checkpoint: HIVE never reads the pooler.
    ViTModel(tiny_vision_config("vit"), add_pooling_layer=False).save_pretrained(tmp_path / "no-pooler")
    ViTForImageClassification(tiny_vision_config("vit")).save_pretrained(tmp_path / "classifier")
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(tmp_path / "llama")
    for encoder in ("no-pooler", "classifier"):
        model = HiveForConditionalGeneration.from_backbones(str(tmp_path / encoder), str(tmp_path / "llama"), cross_attention_layers=[[1, 1], [3, 3]])
        assert not model.model.vision_model.pooler.dense.weight.requires_grad
    # A checkpoint whose connected layers are missing is still refused.
    partial = ViTModel(tiny_vision_config("vit", num_layers=2))
    partial.config.num_hidden_layers = 4  # claims 4 layers, holds 2
    partial.save_pretrained(tmp_path / "truncated")
    with pytest.raises(ValueError, match=r"lacks weights HIVE uses: \['[\w.]*layers?\.2\."):  # the connected layer 3's input
        HiveForConditionalGeneration.from_backbones(str(tmp_path / "truncated"), str(tmp_path / "llama"), cross_attention_layers=[[1, 1], [3, 3]])


def test_from_backbones_takes_the_vision_tower_of_a_dual_encoder_and_a_tied_gpt2(tmp_path):
    torch.manual_seed(4)
    clip = CLIPModel(CLIPConfig(vision_config=tiny_vision_config("clip").to_dict(), text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    gpt2 = GPT2LMHeadModel(tiny_text_config("gpt2"))
    gpt2.save_pretrained(tmp_path / "gpt2")
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "clip"), str(tmp_path / "gpt2"))
    assert type(model.model.vision_model).__name__ == "CLIPVisionModel"
    for name, tensor in clip.vision_model.state_dict().items():
        assert torch.equal(model.model.vision_model.state_dict()[name], tensor), name
    assert model.lm_head.weight is model.model.language_model.wte.weight
    assert torch.equal(model.lm_head.weight, gpt2.lm_head.weight)


VIT_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
LLAMA_TEXT = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.mark.parametrize(
    "family, config",
    [
        ("internvl", dict(vision_config=dict(model_type="internvl_vision", **VIT_TOWER), text_config=LLAMA_TEXT)),
        ("idefics3", dict(vision_config=dict(model_type="idefics3_vision", **VIT_TOWER), text_config=LLAMA_TEXT, scale_factor=2)),
    ],
)
def test_from_backbones_finds_the_vision_tower_inside_a_full_vlm_checkpoint(family, config, tmp_path):
    torch.manual_seed(0)
    vlm = AutoModel.from_config(CONFIG_MAPPING[family](**config))  # the tower sits under vision_tower. / vision_model.
    vlm.save_pretrained(tmp_path / family)
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(tmp_path / "llama")
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / family), str(tmp_path / "llama"), cross_attention_layers=[[0, 1], [1, 3]])
    tower = next(module for module in vlm.modules() if type(module) is type(model.model.vision_model))
    for name, tensor in tower.state_dict().items():
        assert torch.equal(model.model.vision_model.state_dict()[name], tensor), name


def test_from_backbones_refuses_an_encoder_that_needs_more_than_pixel_values(tmp_path):
    # Qwen2.5-VL's tower takes flattened patches and their grid (grid_thw): found inside the VLM, then refused by name.
    text = dict(LLAMA_TEXT, model_type="qwen2_5_vl_text")
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=32, fullatt_block_indexes=[1])
    AutoModel.from_config(CONFIG_MAPPING["qwen2_5_vl"](vision_config=vision, text_config=text)).save_pretrained(tmp_path / "qwen2_5_vl")
    LlamaForCausalLM(tiny_text_config("llama")).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"cannot use Qwen2_5_VisionTransformerPretrainedModel .* requires \['hidden_states', 'grid_thw'\]"):
        HiveForConditionalGeneration.from_backbones(str(tmp_path / "qwen2_5_vl"), str(tmp_path / "llama"), cross_attention_layers=[[0, 1], [1, 3]])


@pytest.mark.parametrize(
    "family, config",
    [
        ("falcon", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)),
        ("mamba", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2)),
    ],
)
def test_an_llm_whose_decoder_layers_never_see_the_image_is_refused_when_built(family, config):
    # FalconModel and MambaModel call their layers without the forward's **kwargs: the blocks would never run.
    text_config = CONFIG_MAPPING[family](**config).to_dict()
    hive_config = HiveConfig(
        vision_config=tiny_vision_config("vit").to_dict(), text_config=text_config, cross_attention_layers=[[1, 0], [3, 1]],
        cross_attention_num_heads=2, cross_attention_num_key_value_heads=2,
    )
    with pytest.raises(ValueError, match=rf"cannot insert cross-attention into \w+ \({family}\).*\[0, 1\].*silently ignored"):
        HiveForConditionalGeneration(hive_config)


TINY_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.mark.parametrize("family", ["swin", "convnext"])
def test_a_multi_scale_encoder_feeds_each_stage_through_its_own_projector(family, tmp_path):
    # Swin's and ConvNeXt's stages differ in width and resolution; ConvNeXt's feature maps are flattened to tokens.
    config = tiny_hive_config(family, "llama", cross_attention_layers=None)
    assert config.cross_attention_layers == [[0, 0], [1, 1], [2, 2], [3, 3]]  # by default one pair per stage
    torch.manual_seed(0)
    model = HiveForConditionalGeneration(config).eval()
    input_ids, pixel_values = inputs()
    outputs = model(input_ids=input_ids, pixel_values=pixel_values, output_vision_features=True)
    tokens, widths = zip(*(tuple(level.shape[1:]) for level in outputs.vision_hidden_states))
    assert [projector.linear_1.in_features for projector in model.model.multi_modal_projectors] == list(widths)
    assert widths[0] < widths[-1] and tokens[0] > tokens[-1]  # early stages: narrow and fine; late ones: wide and coarse
    torch.testing.assert_close(outputs.logits, bare_llm(model)(input_ids=input_ids).logits)  # closed gates: the bare LLM

    open_gates(model, 0.5)
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.equal(logits, model(input_ids=input_ids, pixel_values=pixel_values).logits)
    assert not torch.allclose(logits, model(input_ids=input_ids, pixel_values=pixel_values.flip(-1)).logits)
    model.train()
    model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("model.multi_modal_projectors.", "model.cross_attention_layers.")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.eval().save_pretrained(tmp_path)
    reloaded = HiveForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(input_ids=input_ids, pixel_values=pixel_values).logits, logits)


def test_a_backbone_whose_init_fills_a_non_persistent_buffer_reloads_exactly(tmp_path):
    # Falcon-H1's base model fills each layer's mup_vector (a non-persistent buffer) in its own init; unfilled, every
    # logit is NaN after from_pretrained.
    text = CONFIG_MAPPING["falcon_h1"](**TINY_TEXT, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=8)
    torch.manual_seed(0)
    model = HiveForConditionalGeneration(
        HiveConfig(vision_config=tiny_vision_config("vit").to_dict(), text_config=text.to_dict(), cross_attention_layers=[[1, 0], [3, 1]])
    ).eval()
    open_gates(model, 0.5)
    input_ids, pixel_values = inputs()
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    model.save_pretrained(tmp_path)
    reloaded = HiveForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(input_ids=input_ids, pixel_values=pixel_values).logits, logits)


def test_a_vit_mae_encoder_keeps_every_patch_in_place_inside_hive():
    # ViT-MAE drops 75% of its patches at random in every forward, eval mode included: inside HIVE its mask ratio is 0
    # and it gets ascending noise, so it keeps every patch in its own order and one image gives one answer.
    vision = CONFIG_MAPPING["vit_mae"](hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    config = HiveConfig(vision_config=vision.to_dict(), text_config=tiny_text_config("llama").to_dict(), cross_attention_layers=[[1, 1], [3, 3]])
    assert vision.mask_ratio == 0.75 and config.vision_config.mask_ratio == 0.0
    torch.manual_seed(0)
    model = HiveForConditionalGeneration(config).eval()
    open_gates(model, 0.5)
    input_ids, pixel_values = inputs()
    encoder_outputs, levels = model.model.encode_image(pixel_values)
    assert levels[0].shape[1] == 1 + 16  # the CLS token and all 16 patches
    assert torch.equal(encoder_outputs.ids_restore, torch.arange(16).expand(2, -1))  # in their own order
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.equal(logits, model(input_ids=input_ids, pixel_values=pixel_values).logits)


LOGIT_RULES = [
    ("gemma2", dict()),  # tanh soft-capping of the logits at 30 (transformers' default)
    ("granite", dict(logits_scaling=8.0)),  # logits divided by a constant
    ("cohere", dict(logit_scale=0.0625)),  # logits multiplied by a constant
]


def test_from_backbones_refuses_an_llm_with_a_biased_output_layer(tmp_path):
    ViTModel(tiny_vision_config("vit")).save_pretrained(tmp_path / "vit")
    AutoModelForCausalLM.from_config(CONFIG_MAPPING["phi"](**TINY_TEXT)).save_pretrained(tmp_path / "phi")
    with pytest.raises(ValueError, match=r"cannot reproduce the logits of .*phi.*has a bias"):
        HiveForConditionalGeneration.from_backbones(str(tmp_path / "vit"), str(tmp_path / "phi"), cross_attention_layers=[[1, 0], [3, 1]])


@pytest.mark.parametrize("family, config", LOGIT_RULES)
def test_an_llm_that_post_processes_its_logits_gives_its_own_logits_in_hive(family, config, tmp_path):
    # Soft-capping and scaling come from the LLM's own causal-LM forward, run on HIVE's hidden states: no per-family rule.
    ViTModel(tiny_vision_config("vit")).save_pretrained(tmp_path / "vit")
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(CONFIG_MAPPING[family](**TINY_TEXT, **config)).eval()
    with torch.no_grad():  # logits large enough for soft-capping to show
        llm.get_output_embeddings().weight.mul_(50.0)
    llm.save_pretrained(tmp_path / family)
    model = HiveForConditionalGeneration.from_backbones(str(tmp_path / "vit"), str(tmp_path / family), cross_attention_layers=[[1, 0], [3, 1]]).eval()
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        outputs = model(input_ids=input_ids, pixel_values=pixel_values, output_hidden_states=True)
        expected = llm(input_ids=input_ids).logits
        head_alone = model.lm_head(outputs.hidden_states[-1])
    torch.testing.assert_close(outputs.logits, expected, atol=1e-4, rtol=1e-4)  # closed gates: the LLM's own logits
    assert (head_alone - expected).abs().max() > 1.0  # which the head alone would not give
    # A model built from a HiveConfig by hand measures the same at build time.
    built = HiveForConditionalGeneration(model.config).eval()
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built(input_ids=input_ids).logits, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ training hygiene


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids, pixel_values = inputs()

    def gradients(checkpointing):
        model = build(("siglip", "qwen2"), gate=0.5)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.cross_attention_layers[0].gradient_checkpointing
        model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_forward():
    model = build(gate=0.5).to(torch.bfloat16)
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all() and torch.isfinite(out.loss)


def test_no_split_modules_let_device_map_auto_place_the_model(tmp_path):
    from accelerate import infer_auto_device_map

    model, folder = save_tiny(tmp_path)
    assert {"HiveCrossAttentionLayer", "LlamaDecoderLayer", "ViTLayer"} <= set(model._no_split_modules)
    # Squeeze the model over two "devices": whole blocks move, none is cut in half.
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    device_map = infer_auto_device_map(model, max_memory={"cpu": size // 2, "disk": 10 * size}, no_split_module_classes=model._no_split_modules)
    assert set(device_map.values()) == {"cpu", "disk"}
    for name in device_map:
        parts = name.split(".")
        for anchor in ("cross_attention_layers", "layers"):
            if anchor in parts:
                assert len(parts) <= parts.index(anchor) + 2, f"{name} splits a no-split block"
    placed = HiveForConditionalGeneration.from_pretrained(folder, device_map="auto")
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        torch.testing.assert_close(placed(input_ids=input_ids, pixel_values=pixel_values).logits, model(input_ids=input_ids, pixel_values=pixel_values).logits)


def test_a_model_with_its_encoder_offloaded_to_disk_loads_and_reproduces_the_logits(tmp_path):
    # Loading runs no second probe through accelerate's offload hooks: the unused weights are frozen by name.
    model, folder = save_tiny(tmp_path)
    device_map = {"model.vision_model": "disk", "model.multi_modal_projectors": "cpu", "model.cross_attention_layers": "cpu",
                  "model.language_model": "cpu", "lm_head": "cpu"}
    placed, info = HiveForConditionalGeneration.from_pretrained(
        folder, device_map=device_map, offload_folder=str(tmp_path / "offload"), output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not placed.model.vision_model.pooler.dense.weight.requires_grad
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        torch.testing.assert_close(placed(input_ids=input_ids, pixel_values=pixel_values).logits, model(input_ids=input_ids, pixel_values=pixel_values).logits)


def test_an_encoder_the_meta_probe_cannot_run_is_probed_with_its_weights():
    # SmolVLM's vision tower reads the pixel values (`.item()`), which the meta device cannot; the real-weight probe
    # still freezes what no connected layer uses.
    vision = CONFIG_MAPPING["smolvlm_vision"](
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    config = HiveConfig(vision_config=vision.to_dict(), text_config=tiny_text_config("llama").to_dict(), cross_attention_layers=[[1, 1], [2, 3]])
    model = HiveForConditionalGeneration(config)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(".layers.3." in name for name in frozen) and not any(".layers.1." in name for name in frozen)
    input_ids, pixel_values = inputs()
    model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_set_trainable_freezes_by_component_and_counts():
    model = build(gate=0.5)
    counts = model.set_trainable(vision=False, projector=True, cross_attention=True, llm=False)
    components = model.component_parameters()
    assert counts["vision"]["trainable"] == 0 and counts["llm"]["trainable"] == 0
    assert counts["projector"]["trainable"] == counts["projector"]["total"] == sum(p.numel() for p in components["projector"])
    assert counts["cross_attention"]["trainable"] == sum(p.numel() for p in model.model.cross_attention_layers.parameters())
    assert counts["total"]["total"] == sum(p.numel() for p in model.parameters())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.multi_modal_projectors", "model.cross_attention_layers")) for name in trainable)
    counts = model.set_trainable(vision=True)
    assert 0 < counts["vision"]["trainable"] < counts["vision"]["total"] and counts["llm"]["trainable"] == 0
    vision = model.model.vision_model
    # the deepest connected layer is 3 (of 0-3): every encoder layer trains; the pooler and final norm feed nothing
    assert all(p.requires_grad for p in vision.layers.parameters())
    assert not any(p.requires_grad for p in vision.pooler.parameters()) and not vision.layernorm.weight.requires_grad
    shallow = build(cross_attention_layers=[[0, 1], [1, 3]])
    shallow.set_trainable(vision=True)
    assert all(p.requires_grad for p in shallow.model.vision_model.layers[1].parameters())
    assert not any(p.requires_grad for p in shallow.model.vision_model.layers[2].parameters())


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("mode", ["paired", "all_levels"])
def test_every_connected_vision_layer_gets_gradient_from_the_lm_loss(pair, mode):
    model = build(pair, gate=0.5, hierarchy_mode=mode, cross_attention_layers=[[0, 0], [1, 1], [3, 3]])
    model.train()
    input_ids, pixel_values = inputs()
    out = model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids, output_vision_features=True)
    for states in out.vision_hidden_states:
        states.retain_grad()
    out.loss.backward()
    for layer, states in zip(model.config.vision_layers, out.vision_hidden_states):
        assert states.grad is not None and states.grad.abs().sum() > 0, f"vision layer {layer} got no gradient"
    encoder_layers = [m for m in model.model.vision_model.modules() if isinstance(m, torch.nn.ModuleList)][0]
    for layer in model.config.vision_layers:
        grads = [p.grad for p in encoder_layers[layer].parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("pair", PAIRS)
def test_every_trainable_parameter_of_a_fresh_or_reloaded_model_gets_a_gradient(pair, tmp_path):
    # DDP and FSDP refuse (or need find_unused_parameters for) a trainable weight that never gets a gradient: the
    # encoder's final norm and pooler, which no connected layer reaches, start frozen, also after from_pretrained.
    fresh = build(pair, gate=0.5, cross_attention_layers=[[1, 1], [2, 3]])
    fresh.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=True)
    input_ids, pixel_values = inputs()
    for model in (fresh, reloaded):
        model.train()
        model(input_ids=input_ids, pixel_values=pixel_values, labels=input_ids).loss.backward()
        no_gradient = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert no_gradient == []
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        assert frozen and all(name.startswith("model.vision_model.") for name in frozen)
        assert not any(".layers.1." in name or ".layer.1." in name for name in frozen)  # connected layers train


@pytest.mark.parametrize("model_class", [HiveModel, HiveForConditionalGeneration])
def test_return_dict_false_gives_the_output_as_a_tuple(model_class):
    torch.manual_seed(0)
    model = model_class(tiny_hive_config("vit", "llama", gate_init=1.0)).eval()
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        as_dict = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
        as_tuple = model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for from_tuple, from_dict in zip(as_tuple, as_dict.to_tuple()):
        if isinstance(from_dict, torch.Tensor):
            torch.testing.assert_close(from_tuple, from_dict, rtol=0, atol=0)
        else:
            assert type(from_tuple) is type(from_dict)


def test_shift_labels_are_the_targets_when_given():
    # Sequence and context parallelism hand the model pre-shifted targets: position t is scored against shift_labels[t].
    model = build(gate=1.0)
    input_ids, pixel_values = inputs()
    labels = input_ids.clone()
    labels[:, :3] = -100
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        from_labels = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss
        from_shift = model(input_ids=input_ids, pixel_values=pixel_values, shift_labels=shifted).loss
        other = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels, shift_labels=shifted.roll(1, dims=1)).loss
    torch.testing.assert_close(from_shift, from_labels)
    assert not torch.isclose(other, from_labels)  # shift_labels wins over labels


def test_get_image_features_returns_the_image_tokens_the_blocks_read_and_outputs_carry_them():
    model = build(gate=1.0, cross_attention_layers=[[0, 1], [3, 2]])
    model.set_attn_implementation("eager")  # attention weights need eager attention
    input_ids, pixel_values = inputs()
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values)
        asked = model.model.get_image_features(pixel_values, output_hidden_states=True, output_attentions=True)
        as_tuple = model.model.get_image_features(pixel_values, return_dict=False)
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        encoder = model.model.vision_model(pixel_values, output_hidden_states=True)
    assert isinstance(features, BaseModelOutputWithPooling) and isinstance(as_tuple, tuple)
    assert features.pooler_output.shape == (2, 2 * 17, 32)  # 2 levels of 17 tokens, in the LLM width
    assert features.hidden_states is None and len(asked.hidden_states) == 5 and len(asked.attentions) == 4
    torch.testing.assert_close(features.last_hidden_state, encoder.last_hidden_state)
    levels = model.model.project_levels((encoder.hidden_states[1], encoder.hidden_states[4]))
    torch.testing.assert_close(features.pooler_output, torch.cat(levels, dim=1))
    torch.testing.assert_close(out.image_outputs.pooler_output, features.pooler_output)


@pytest.mark.parametrize("pair, sharded", [(("siglip", "qwen2"), True), (("clip", "gpt2"), False)])
def test_the_tensor_parallel_plan_shards_a_tied_head_with_its_embeddings(pair, sharded):
    # Qwen2 (tied, as Qwen2-0.5B is) has a plan that shards its embeddings; GPT-2 (tied) has no plan at all.
    model = build(pair, text_kwargs={"tie_word_embeddings": True})
    assert model.lm_head.weight is model.get_input_embeddings().weight
    names = {module: name for name, module in model.named_modules()}
    assert names[model.get_input_embeddings()] in model.tp_plan if sharded else not model.tp_plan
    assert (names[model.lm_head] in model.tp_plan) == (names[model.get_input_embeddings()] in model.tp_plan)


def test_bad_inputs_get_clear_errors():
    model = build()
    input_ids, pixel_values = inputs()
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(input_ids=input_ids, pixel_values=pixel_values[:, :1])
    with pytest.raises(ValueError, match="2 samples"):
        model(input_ids=input_ids, pixel_values=pixel_values[:1])
    with pytest.raises(ValueError, match="NaN"):
        model(input_ids=input_ids, pixel_values=pixel_values.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(input_ids=input_ids + VOCAB, pixel_values=pixel_values)
    with pytest.raises(ValueError, match="empty"):
        model(input_ids=input_ids[:, :0])
    with pytest.raises(ValueError, match="image_mask"):
        model(input_ids=input_ids, pixel_values=pixel_values, image_mask=torch.tensor([True]))
    with pytest.raises(ValueError, match="labels must have the shape"):
        model(input_ids=input_ids, labels=input_ids[:, :3])
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
        model(input_ids=input_ids, pixel_values=pixel_values.numpy())


def test_auto_classes_resolve_hive_in_process(tmp_path):
    model, folder = save_tiny(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(loaded, HiveForConditionalGeneration)
    assert isinstance(HiveModel.from_pretrained(folder), HiveModel)
