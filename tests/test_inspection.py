"""What HIVE measures of its backbones when a model is built (`modeling_hive/inspection_hive.py`) is recorded in the
config, so that loading a saved folder does not measure it again, and measured anew when the record does not fit."""

import json

import pytest
import torch

import modeling_hive.inspection_hive as inspection
from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveForConditionalGeneration


PROBES = ("check_encoder_output", "check_cross_attention_is_reached", "find_unused_vision_parameters")


def saved(tmp_path, mode="gated"):
    torch.manual_seed(0)
    # Two pairs at encoder layers 1 and 2 of 4: the last layer and the final norm are unused (frozen).
    config = tiny_hive_config("vit", "llama", cross_attention_layers=[[1, 1], [2, 3]], cross_attention_mode=mode)
    model = HiveForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    return model


def counting_probes(monkeypatch):
    calls = []
    for name in PROBES:
        original = getattr(inspection, name)
        monkeypatch.setattr(inspection, name, lambda *a, _original=original, _name=name, **k: calls.append(_name) or _original(*a, **k))
    return calls


@pytest.mark.parametrize("mode", ["gated", "shared_softmax"])
def test_loading_a_saved_folder_reads_the_recorded_inspection_instead_of_probing(tmp_path, monkeypatch, mode):
    model = saved(tmp_path, mode)
    record = json.loads((tmp_path / "config.json").read_text())["backbone_inspection"]
    assert record["unused_vision_parameters"] == model.model.unused_vision_parameter_names
    assert any(name.startswith("layers.3.") for name in record["unused_vision_parameters"])
    assert (record["rotary_style"] is not None) == (mode == "shared_softmax")
    calls = counting_probes(monkeypatch)
    loaded = HiveForConditionalGeneration.from_pretrained(tmp_path)
    assert calls == []
    assert loaded.model.rotary_style == model.model.rotary_style
    frozen = {name for name, p in loaded.model.vision_model.named_parameters() if not p.requires_grad}
    assert frozen == set(record["unused_vision_parameters"])
    input_ids, pixel_values = torch.tensor([[5, 6, 7]]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids, pixel_values=pixel_values).logits,
                                   model(input_ids=input_ids, pixel_values=pixel_values).logits)  # fmt: skip


def test_a_record_that_does_not_fit_is_measured_again(tmp_path, monkeypatch):
    saved(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_inspection"]["fingerprint"] = "made-by-another-transformers"
    (tmp_path / "config.json").write_text(json.dumps(config))
    calls = counting_probes(monkeypatch)
    loaded = HiveForConditionalGeneration.from_pretrained(tmp_path)
    assert set(calls) == set(PROBES)
    assert loaded.config.backbone_inspection["fingerprint"] == inspection.backbone_fingerprint(loaded.config)


def test_the_fingerprint_follows_what_the_measurements_depend_on():
    config = tiny_hive_config("vit", "llama")
    fingerprint = inspection.backbone_fingerprint(config)
    assert inspection.backbone_fingerprint(tiny_hive_config("vit", "llama")) == fingerprint
    for other in (tiny_hive_config("vit", "llama", cross_attention_layers=[[0, 1], [3, 3]]), tiny_hive_config("vit", "qwen2"),
                  tiny_hive_config("vit", "llama", cross_attention_mode="shared_softmax"),
                  tiny_hive_config("vit", "llama", vision_kwargs={"num_layers": 5})):  # fmt: skip
        assert inspection.backbone_fingerprint(other) != fingerprint
    monkey = tiny_hive_config("vit", "llama")
    monkey.text_config.num_hidden_layers = 4  # unchanged value: same fingerprint
    assert inspection.backbone_fingerprint(monkey) == fingerprint


def test_parameters_reached_names_what_a_forward_reaches():
    first, second, unused = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    assert inspection.parameters_reached((first * 2 + second).sum(), [first, second, unused]) == [True, True, False]
