"""`hive visualize`: per-level cross-attention maps over the patch grid, the gates, and the PNG they make."""

import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from hive_vlm import cli
from hive_vlm.visualize.maps import _prompt, _question_positions, cross_attention_maps, visualize
from tiny_hive import tiny_model


QUESTION = "what color is the circle ?"
CORPUS = ["a red circle on the left .", QUESTION, "red", "how many objects are there ? 2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


def make_model(processor, **hive_kwargs):
    return tiny_model(processor, gate_init=0.5, **hive_kwargs).eval()


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "pairs, mode",
    [([[1, 1], [3, 3]], "paired"), ([[0, 1], [1, 2], [3, 3]], "paired"), ([[1, 2], [3, 3]], "all_levels")],
)
def test_one_panel_per_vision_level_in_a_valid_png(processor, image, tmp_path, pairs, mode):
    model = make_model(processor, cross_attention_layers=pairs, hierarchy_mode=mode)
    out = tmp_path / "figure.png"

    figure = visualize(model, image, QUESTION, out, processor=processor)

    levels = model.config.vision_layers
    assert figure.num_level_panels == len(levels)
    assert figure.num_panels == len(levels) + 2  # the image, the levels, the gates
    assert [level.vision_layer for level in figure.levels] == levels
    width, height = png_size(out)
    assert (width, height) == (round(2.6 * figure.num_panels * 100), 300)
    assert Image.open(out).size == (width, height)


def test_level_maps_average_heads_and_question_tokens_over_the_patch_grid(processor, image):
    model = make_model(processor, cross_attention_layers=[[1, 1], [3, 3]])
    levels, _, _ = cross_attention_maps(model, processor, image, QUESTION)

    text, add_special_tokens = _prompt(processor, QUESTION)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=add_special_tokens)
    with torch.no_grad():
        weights = model(**inputs, output_cross_attentions=True).cross_attentions
    positions = _question_positions(processor.tokenizer, text, QUESTION, add_special_tokens)
    question_ids = processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert [inputs["input_ids"][0, p].item() for p in positions] == question_ids
    for level, block_weights in zip(levels, weights):
        assert block_weights.shape[-1] == 1 + 16  # CLS + the 4x4 patches of a 32px image with 8px patches
        expected = block_weights[0].mean(dim=0)[positions].mean(dim=0)[1:]
        expected = (expected / expected.sum()).reshape(4, 4).numpy()
        assert level.weights.shape == (4, 4)
        np.testing.assert_allclose(level.weights, expected, rtol=1e-5, atol=1e-7)
        assert math.isclose(level.weights.sum(), 1.0, rel_tol=1e-5)


def test_all_levels_mode_splits_the_image_tokens_per_level(processor, image):
    model = make_model(processor, cross_attention_layers=[[1, 2], [3, 3]], hierarchy_mode="all_levels")
    levels, _, _ = cross_attention_maps(model, processor, image, QUESTION)

    assert [level.vision_layer for level in levels] == [1, 3]
    for level in levels:
        assert level.text_layers == [2, 3]  # every block reads every level
        assert level.weights.shape == (4, 4)
        assert math.isclose(level.weights.sum(), 1.0, rel_tol=1e-5)
    assert not np.allclose(levels[0].weights, levels[1].weights)


def test_gates_are_tanh_of_each_block(processor, image):
    model = make_model(processor, cross_attention_layers=[[1, 1], [3, 3]])
    with torch.no_grad():
        model.model.cross_attention_layers[0].cross_attn_attn_gate.fill_(0.3)
        model.model.cross_attention_layers[1].cross_attn_mlp_gate.fill_(-2.0)

    _, gates, _ = cross_attention_maps(model, processor, image, QUESTION)

    assert [(gate.vision_layer, gate.text_layer) for gate in gates] == [(1, 1), (3, 3)]
    assert gates[0].attn == pytest.approx(math.tanh(0.3))
    assert gates[0].mlp == pytest.approx(math.tanh(0.5))
    assert gates[1].mlp == pytest.approx(math.tanh(-2.0))


def test_answer_is_the_models_greedy_answer(processor, image, tmp_path):
    model = make_model(processor)
    figure = visualize(model, image, QUESTION, tmp_path / "a.png", processor=processor)

    text, _ = _prompt(processor, QUESTION)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    sequences = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert figure.answer == expected.strip()


def test_bad_inputs_are_named(processor, image, tmp_path):
    model = make_model(processor)
    with pytest.raises(ValueError, match="processor"):
        visualize(model, image, QUESTION, tmp_path / "x.png")
    with pytest.raises(ValueError, match="question is empty"):
        visualize(model, image, "  ", tmp_path / "x.png", processor=processor)
    with pytest.raises(TypeError, match="HIVE model"):
        visualize(torch.nn.Linear(2, 2), image, QUESTION, tmp_path / "x.png", processor=processor)
    assert not (tmp_path / "x.png").exists()


def test_cli_draws_a_saved_folder(processor, image, tmp_path, capsys):
    folder = tmp_path / "model"
    make_model(processor, cross_attention_layers=[[0, 1], [1, 2], [3, 3]]).save_pretrained(folder)
    processor.save_pretrained(folder)
    image.save(tmp_path / "scene.png")
    out = tmp_path / "figures" / "attention.png"

    code = cli.main(["visualize", "--model", str(folder), "--image", str(tmp_path / "scene.png"),
                     "--question", QUESTION, "--out", str(out)])  # fmt: skip

    assert code == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "3 level panels" in capsys.readouterr().out
    code = cli.main(["visualize", "--model", str(folder), "--image", str(tmp_path / "missing.png"),
                     "--question", QUESTION, "--out", str(tmp_path / "other.png")])  # fmt: skip
    assert code == 2
    assert "missing.png' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "other.png").exists()
