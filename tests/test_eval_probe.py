"""The linear probe on frozen encoder features, from an exported encoder or a HIVE checkpoint (issue 6)."""

import json

import datasets
import pytest
import torch
from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

from eval_fixtures import write_classification
from hive_vlm.eval.classification import linear_probe, top_k_accuracy, train_linear_probe
from hive_vlm.tiny import tiny_hive_config
from modeling_hive import HiveForConditionalGeneration
from tiny_hive import tiny_processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Three classes, each a noisy image of its own colour: linearly separable for any encoder that sees colour.
    return write_classification(tmp_path_factory.mktemp("probe"), train_per_class=6, test_per_class=2, image_size=16)


def test_top_k_accuracy_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    labels = torch.tensor([1, 1])
    assert top_k_accuracy(logits, labels, 1) == 50.0  # argmaxes 0 (wrong) and 1 (right)
    assert top_k_accuracy(logits, labels, 2) == 100.0  # {0, 1} and {1, 2} both hold 1
    assert top_k_accuracy(logits, labels, 5) == 100.0  # k is capped at the 3 classes


def test_the_probe_head_is_batchnorm_without_affine_then_linear():
    features, labels = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    head = train_linear_probe(features, labels, num_classes=2, epochs=1, batch_size=4)
    assert head[0].weight is None and head[0].bias is None and not head[0].training
    assert head[1].out_features == 2


def test_linear_probe_of_an_exported_encoder(tmp_path, data):
    torch.manual_seed(0)
    encoder = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=8))  # fmt: skip
    encoder.save_pretrained(tmp_path / "encoder")
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "encoder")

    results = linear_probe(tmp_path / "encoder", data, tmp_path / "probe.json", epochs=30, batch_size=6, progress=False)
    assert results["scores"] == {"top1": 100.0, "top5": 100.0}
    assert results["encoder"] == "ViTModel" and results["num_classes"] == 3
    assert (results["num_train"], results["num_test"]) == (18, 6)
    assert json.loads((tmp_path / "probe.json").read_text()) == results


def test_linear_probe_takes_the_vision_model_of_a_hive_checkpoint(tmp_path, data):
    processor = tiny_processor(["a red circle"])
    torch.manual_seed(0)
    hive = HiveForConditionalGeneration(tiny_hive_config("vit", "llama", text_kwargs={"vocab_size": len(processor.tokenizer)}))
    hive.save_pretrained(tmp_path / "hive")
    processor.save_pretrained(tmp_path / "hive")
    results = linear_probe(tmp_path / "hive", data, epochs=30, batch_size=6, progress=False)
    assert results["encoder"] == "HiveForConditionalGeneration.model.vision_model"  # AutoModel gives the generating class
    assert results["scores"]["top1"] == 100.0


def test_linear_probe_needs_an_image_classification_dataset(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]})}
    ).save_to_disk(str(tmp_path / "text"))  # fmt: skip
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "encoder")  # fmt: skip
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "encoder")
    with pytest.raises(ValueError, match="needs an Image column and a ClassLabel column"):
        linear_probe(tmp_path / "encoder", tmp_path / "text", progress=False)
