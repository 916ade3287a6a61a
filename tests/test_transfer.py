"""`hive transfer`: encoders pre-trained in different ways, each carried into transformers' own LLaVA on equal terms."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hive_vlm.transfer.settings import VARIANTS, load_transfer
from hive_vlm.transfer.study import run_transfer


REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny-shapes.yaml"
SMALL_LLM = ["transfer.text_config={model_type: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
             "num_key_value_heads: 1, intermediate_size: 64, max_position_embeddings: 512}"]  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    overrides = ['transfer.variants=["hive-paired", "flat", "mim-only", "none"]', *SMALL_LLM]
    recipe, study, transfer = load_transfer(TINY, quick=True, overrides=overrides)
    report = run_transfer(recipe, study, transfer, out, isolate=False)
    return out, transfer, report


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def test_quick_transfer_writes_every_output(quick):
    out, transfer, report = quick
    assert transfer.variants == ["hive-paired", "flat", "mim-only", "none"] and transfer.seeds == [0]
    saved = json.loads((out / "transfer.json").read_text())
    assert sorted(saved["aggregate"]) == sorted(transfer.variants)
    # every run names the encoder it transferred by its weights' digest, so a committed study can be checked
    digests = {run["fusion"]: run["encoder_digest"] for run in saved["runs"]}
    assert sorted(digests) == sorted(transfer.variants) and all(len(digest) == 16 for digest in digests.values())
    assert digests["none"] != digests["mim-only"] != digests["hive-paired"]
    for variant in transfer.variants:
        row = saved["aggregate"][variant]
        for metric in ("test/accuracy", "test/low", "mme/perception", "okvqa/vqa_accuracy", "probe/low", "seconds_per_step/stage3"):
            assert metric in row, (variant, metric)
    table = (out / "transfer.md").read_text()
    assert "| variant | accuracy | low |" in table and "Pre-training cost" in table and "one seed: cannot tell" in table
    # flat pre-trains on the layer transfer reads (the authors' SA); every variant's readout and the budgets are named
    assert "| flat | layer 2 of 4 (vision_feature_layer -2) | layer 2 of 4 (vision_feature_layer -2) |" in table
    assert "| hive-paired | layers 1, 3 of 4 | layer 2 of 4 (vision_feature_layer -2) |" in table
    assert "| mim-only | – (no fusion) |" in table and "Budgets matched to hive-paired's stage-2 budget" in table
    # both LLM settings are named: the pre-training's (tiny-shapes' own stage 3) and the transfer's
    assert "In pre-training: LoRA r=4 on the LLM in stage 3" in table and "the whole LLM trained in stage 3" in table
    assert saved["pretraining_cost"]["hive-paired"]["stage2"] > 0 and saved["pretraining_cost"]["none"]["stage2"] == "–"
    # the JSON keeps both: the transfer's settings ("study") and the pre-training's, whose LLM trained differently
    assert saved["pretraining_study"]["stage3"]["lora_r"] == 4 and saved["pretraining_study"]["pretrain_llm"] is False
    assert saved["pretraining_study"]["fusions"] == ["hive-paired", "flat"] and saved["study"]["fusions"] == transfer.variants
    for name in ("accuracy_vs_steps", "accuracy_per_level"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "pretraining" / "ablation.md").is_file()  # the pre-training is a hive ablate study of its own


def test_each_variant_transfers_its_own_encoder_on_equal_terms(quick):
    out, transfer, _ = quick
    runs = {v: json.loads((out / "transfer" / f"{v}-seed0" / "result.json").read_text()) for v in transfer.variants}
    shared = out / "pretraining" / "shared"
    name = "encoder.layer.0.attention.attention.query.weight"
    initial = weights(shared / "backbones" / "vision")[name]
    after_mim = weights(shared / "stage1" / "model")[name]
    through_hive = weights(out / "pretraining" / "runs" / "hive-paired-seed0" / "encoder")[name]
    assert torch.equal(weights(runs["none"]["encoder"])[name], initial)
    assert torch.equal(weights(runs["mim-only"]["encoder"])[name], after_mim)
    assert not torch.equal(after_mim, initial) and not torch.equal(through_hive, after_mim)  # stage 3 trained it
    # the same transfer LLM (not the proxy), the same batches, nothing of the encoder trains
    llm = {run["llm"] for run in runs.values()}
    assert llm == {str(out / "transfer-llm" / "backbones" / "text")}
    assert json.loads((Path(llm.pop()) / "config.json").read_text())["hidden_size"] == 32
    hashes = {variant: run["stages"]["stage3"]["batch_hashes"] for variant, run in runs.items()}
    assert len({tuple(h) for h in hashes.values()}) == 1
    for run in runs.values():
        assert run["parameters"]["stage2"]["vision"]["trainable"] == 0 and run["parameters"]["stage3"]["vision"]["trainable"] == 0
        assert run["parameters"]["stage2"]["llm"]["trainable"] == 0 < run["parameters"]["stage3"]["llm"]["trainable"]
        assert run["parameters"]["stage3"]["llm"]["trainable"] == run["parameters"]["stage3"]["llm"]["total"]  # LLaVA trains it all
        for stage in ("stage2", "stage3"):  # through hive train's trainers: what trains changed, nothing else did
            assert run["stages"][stage]["weights"]["trainable_unchanged"] == run["stages"][stage]["weights"]["frozen_changed"] == []


def test_a_transfer_llm_must_read_the_pretraining_tokens(quick, tmp_path):
    from hive_vlm.data.tokenizer import build_tokenizer
    from hive_vlm.transfer.study import check_same_tokenizer

    out, _, _ = quick
    shared = out / "pretraining" / "shared"
    check_same_tokenizer(str(shared / "backbones" / "text"), shared)  # the proxy LLM's own tokenizer
    build_tokenizer(["a tokenizer of other words"]).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="tokenizer is not the pre-training's"):
        check_same_tokenizer(str(tmp_path / "other"), shared)


def test_transfer_settings_name_bad_keys():
    with pytest.raises(ValueError, match=r"transfer: unknown key\(s\) \['variantz'\]"):
        load_transfer(TINY, overrides=["transfer.variantz=[none]"])
    with pytest.raises(ValueError, match="transfer.variants"):
        load_transfer(TINY, overrides=["transfer.variants=[hive-paired, perceiver]"])
    with pytest.raises(ValueError, match=r"transfer.stage3: \['lora_r', 'train_vision'\] are the transfer's own"):
        load_transfer(TINY, overrides=["transfer.stage3.lora_r=4", "transfer.stage3.train_vision=true"])
    with pytest.raises(ValueError, match=r"transfer.stage2: unknown key\(s\) \['stepz'\]"):  # checked as hive train checks it
        load_transfer(TINY, overrides=["transfer.stage2.stepz=4"])
    recipe, study, transfer = load_transfer(TINY, overrides=["transfer.stage2.max_steps=7", "transfer.stage3.warmup_steps=2"])
    assert transfer.default_transfer is False and transfer.variants == list(VARIANTS) and transfer.stage2["max_steps"] == 7
    assert transfer.stage3["max_steps"] == recipe.stage3["max_steps"] and transfer.vision_feature_layer == -2
    # the recipe's stage settings, the transfer's over them; what trains is the transfer's (tiny-shapes has stage3 LoRA)
    assert transfer.stage3["warmup_steps"] == 2 and transfer.stage3["lora_r"] == 0 and transfer.stage3["train_llm"]
    assert not transfer.stage2["train_vision"] and not transfer.stage2["train_llm"] and not transfer.stage3["train_vision"]
    assert study.fusion.flat_vision_feature_layer == -2 and study.match_params  # the paper's SA, at matched budgets
    _, study, _ = load_transfer(TINY, overrides=["transfer.vision_feature_layer=-1"])
    assert study.fusion.flat_vision_feature_layer == -1  # flat pre-trains on whatever layer transfer reads
    with pytest.raises(ValueError, match=r"flat_vision_feature_layer \(-1\) and transfer.vision_feature_layer \(-2\) differ"):
        load_transfer(TINY, overrides=["study.fusion.flat_vision_feature_layer=-1"])


def test_hive_transfer_command_with_no_pretraining_fusion(tmp_path, monkeypatch):
    # Only the encoders that need no fusion: no ablation runs, the shared folder alone, then the transfer.
    from hive_vlm.cli import main

    monkeypatch.chdir(REPO)
    assert main(["transfer", "--recipe", "recipes/tiny-shapes.yaml", "--quick", "--variants", "mim-only", "none", "--no-isolate",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "transfer.json").read_text())
    assert sorted(saved["aggregate"]) == ["mim-only", "none"] and not (tmp_path / "pretraining" / "runs").exists()
    assert main(["transfer", "--recipe", "recipes/tiny-shapes.yaml", "--threads", "0", "--out", str(tmp_path)]) == 2
    # Seeds given twice would have one silently win: refused, naming both.
    assert main(["transfer", "--recipe", "recipes/tiny-shapes.yaml", "--seeds", "3", "--set", "transfer.seeds=[2]", "--out", str(tmp_path)]) == 2
