"""Model cards and Hub pushes: the card's metadata and model-index, the upload allow-list, dry runs, failing uploads."""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from isolated import run_isolated
from PIL import Image
from transformers import pipeline

from hive_vlm.cli import main
from hive_vlm.push import cli as push_command
from hive_vlm.hub.card import build_model_card, template_path, write_model_card
from hive_vlm.hub.push import dry_run, hub_settings, push_folder, push_training_run, upload_files
from hive_vlm.training.recipe import parse_recipe
from modeling_hive.pipeline_hive import HiveVisualQuestionAnsweringPipeline


UNREACHABLE = "http://127.0.0.1:9"  # loopback discard port: connections are refused at once
FAKE_TOKEN = "hf_hiveTestTokenNeverWrittenAnywhere0123"
CORPUS = ["a red circle and a blue square .", "what colour is the circle ? red", "how many shapes are there ? 2"]
QUESTION = "what colour is the circle ?"
LOADABLE = {
    "README.md",
    "backbones_hive.py",
    "card_hive.py",
    "chat_template.jinja",
    "config.json",
    "compatibility_hive.py",
    "configuration_hive.py",
    "generation_config.json",
    "model.safetensors.index.json",
    "modeling_hive.py",
    "pipeline_hive.py",
    "processing_hive.py",
    "processor_config.json",
    "shared_softmax_hive.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "cache_hive.py",
    "cross_attention_hive.py",
    "images_hive.py",
    "inspection_hive.py",
    "layers_hive.py",
    "outputs_hive.py",
    "trainable_hive.py",
    "validation_hive.py",
}


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


@pytest.fixture(scope="module")
def hive_options():
    return {"cross_attention_layers": [[1, 2], [3, 3]]}


@pytest.fixture(scope="module")
def saved(model, processor, tmp_path_factory):
    """A saved HIVE folder with sharded weights, as `hive train` leaves `final/`."""
    folder = tmp_path_factory.mktemp("saved") / "hive-tiny"
    model.save_pretrained(folder, max_shard_size="200KB")
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shards(saved):
    return set(json.loads((saved / "model.safetensors.index.json").read_text())["weight_map"].values())


@pytest.fixture(scope="module")
def cluttered(saved, tmp_path_factory):
    """The saved folder plus everything a training run or a careless user leaves next to it."""
    folder = tmp_path_factory.mktemp("cluttered") / "final"
    shutil.copytree(saved, folder)
    checkpoint = folder / "checkpoint-30"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "modeling_hive.py", "README.md"):
        shutil.copy(saved / name, checkpoint / name)
    shutil.copy(next(saved.glob("*.safetensors")), checkpoint / "model.safetensors")
    junk = {
        "checkpoint-30/optimizer.pt": b"optimizer",
        "checkpoint-30/scheduler.pt": b"scheduler",
        "checkpoint-30/rng_state.pth": b"rng",
        "checkpoint-30/trainer_state.json": b'{"global_step": 30}',
        "checkpoint-30/training_args.bin": b"args",
        "runs/Nov01_00-00-00_host/events.out.tfevents.1.host": b"events",
        "logs/train.log": b"log",
        "optimizer.pt": b"optimizer",
        "scheduler.pt": b"scheduler",
        "rng_state_0.pth": b"rng",
        "trainer_state.json": b"{}",
        "training_args.bin": b"args",
        "pytorch_model.bin": b"pickle",
        "model.pkl": b"pickle",
        "stray.safetensors": b"not in the index",
        "adapter_model.safetensors": b"not in the index",
        "train.py": b"import os\nprint(os.environ)\n",
        "notes.txt": b"todo",
        "events.out.tfevents.2.host": b"events",
        ".env": f"HF_TOKEN={FAKE_TOKEN}\n".encode(),
        ".huggingface/token": FAKE_TOKEN.encode(),
        "token": FAKE_TOKEN.encode(),
        "hf_token.txt": FAKE_TOKEN.encode(),
        ".git/config": b"[core]",
        "tokenizer.json.bak": b"{}",
    }
    for name, content in junk.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its content hash and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def results_file(folder: Path, name: str, benchmark: str, scores: dict, model_dir: Path, **fields) -> Path:
    """A results JSON in the shape `hive eval` writes, for the model in `model_dir`."""
    config = (model_dir / "config.json").read_bytes()
    results = {
        "benchmark": benchmark,
        "protocol": "official",
        "prompt_template": "{question}",
        "model": {"path": str(model_dir), "config_sha256": hashlib.sha256(config).hexdigest()},
        "data": f"/data/{benchmark}",
        "split": "test",
        "limit": None,
        "num_examples": 8,
        "max_new_tokens": 16,
        "scores": scores,
        "samples": [],
        **fields,
    }
    path = folder / name
    path.write_text(json.dumps(results))
    return path


# --- the allow-list -------------------------------------------------------------------------------------------


def test_allow_list_admits_model_code_processor_and_card_only(cluttered, shards):
    assert set(upload_files(cluttered)) == LOADABLE | shards


def test_allow_list_needs_weights_and_the_code_the_config_names(saved, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    (folder / "pipeline_hive.py").unlink()
    with pytest.raises(ValueError, match="pipeline_hive"):
        upload_files(folder)
    shutil.copy(saved / "pipeline_hive.py", folder)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ValueError, match=shard.name):
        upload_files(folder)
    with pytest.raises(ValueError, match="no config.json"):
        upload_files(tmp_path)


def test_upload_folder_receives_exactly_the_allow_list(cluttered, monkeypatch):
    calls = {}
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.setdefault("create_repo", (repo_id, kwargs)))
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kwargs: calls.setdefault("create_branch", (repo_id, kwargs)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.setdefault("upload_folder", kwargs))

    push_folder(cluttered, "hive-org/hive-tiny", private=True, revision="v1", create_pr=True, endpoint=UNREACHABLE)

    assert calls["create_repo"] == ("hive-org/hive-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["create_branch"] == ("hive-org/hive-tiny", {"branch": "v1", "exist_ok": True, "repo_type": "model"})
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["revision"], upload["create_pr"]) == ("hive-org/hive-tiny", "v1", True)
    assert Path(upload["folder_path"]) == cluttered
    # huggingface_hub's own filter, applied to every file under the folder, must select the allow-list and no more.
    every_file = [path.relative_to(cluttered).as_posix() for path in cluttered.rglob("*") if path.is_file()]
    selected = set(filter_repo_objects(every_file, allow_patterns=upload["allow_patterns"]))
    assert selected == set(upload_files(cluttered))
    assert not any("/" in name for name in selected)


# --- dry run --------------------------------------------------------------------------------------------------


def test_dry_run_writes_exactly_the_upload(cluttered, tmp_path, capsys):
    before = snapshot(cluttered)
    out = tmp_path / "preview"
    assert main(["push", "--model", str(cluttered), "--repo-id", "hive-org/hive-tiny", "--dry-run", str(out)]) == 0
    copied = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert copied == upload_files(cluttered)
    for name in copied:
        assert (out / name).read_bytes() == (cluttered / name).read_bytes()
    assert snapshot(cluttered) == before
    assert "hive-org/hive-tiny" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not empty"):
        dry_run(cluttered, out)
    parser = argparse.ArgumentParser()
    push_command.add_arguments(parser)
    args = parser.parse_args(["--model", str(cluttered), "--repo-id", "no owner/", "--dry-run", str(tmp_path / "other")])
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_command.run(args)
    assert not (tmp_path / "other").exists()


FRESH_PROCESS_CODE = """
import json
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=image, text="a red circle", return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits[0, -1].tolist()
vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
generated = chat(images=image, text="a red circle", max_new_tokens=4, return_tensors=True)
print(json.dumps({
    "model_module": type(model).__module__,
    "processor_class": type(processor).__name__,
    "logits": logits,
    "vqa": vqa(image=image, question=question),
    "chat": generated[0]["generated_token_ids"].tolist(),
}))
"""


def test_dry_run_folder_loads_in_a_fresh_offline_process(cluttered, model, processor, tmp_path):
    out = tmp_path / "preview"
    dry_run(cluttered, out)
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)).save(image)

    inputs = processor(images=str(image), text="a red circle", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    expected_chat = pipeline("image-text-to-text", model=model, processor=processor)(
        images=str(image), text="a red circle", max_new_tokens=4, return_tensors=True
    )[0]["generated_token_ids"].tolist()
    expected_vqa = HiveVisualQuestionAnsweringPipeline(model=model, processor=processor)(image=str(image), question=QUESTION)

    values = f"folder, image, question = {str(out)!r}, {str(image)!r}, {QUESTION!r}\n"
    result = run_isolated(values + FRESH_PROCESS_CODE, str(tmp_path))

    assert result["model_module"].startswith("transformers_modules.")
    assert result["processor_class"] == "HiveProcessor"
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=1e-5, atol=1e-6)
    assert result["vqa"] == expected_vqa
    assert result["chat"] == expected_chat


# --- failing uploads ------------------------------------------------------------------------------------------


def test_failing_upload_names_repo_and_endpoint_and_leaves_the_folder_untouched(cluttered, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    before = snapshot(cluttered)
    with pytest.raises(RuntimeError) as error:
        push_folder(cluttered, "hive-org/hive-tiny", endpoint=UNREACHABLE)
    message = str(error.value)
    assert "hive-org/hive-tiny" in message and UNREACHABLE in message and "create_repo" in message
    assert "Connect" in type(error.value.__cause__).__name__ or "refused" in message.lower()
    assert FAKE_TOKEN not in message
    assert snapshot(cluttered) == before


def test_push_command_fails_cleanly_and_never_prints_the_token(saved, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_TOKEN=FAKE_TOKEN, HF_HOME=str(tmp_path / "hf_home"))
    before = snapshot(saved)
    result = subprocess.run(
        [sys.executable, "-m", "hive_vlm.cli", "push", "--model", str(saved), "--repo-id", "hive-org/hive-tiny", "--private"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "hive push: error: Pushing" in result.stderr and "hive-org/hive-tiny" in result.stderr and UNREACHABLE in result.stderr
    assert FAKE_TOKEN not in result.stdout + result.stderr
    assert snapshot(saved) == before
    assert not (tmp_path / "hf_home").exists() or not any(
        FAKE_TOKEN.encode() in path.read_bytes() for path in (tmp_path / "hf_home").rglob("*") if path.is_file()
    )


def test_push_without_a_token_says_how_to_log_in(saved, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(ValueError, match="hf auth login.*HF_TOKEN"):
        push_folder(saved, "hive-org/hive-tiny", endpoint=UNREACHABLE)


# --- the card -------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_ready(saved, tmp_path):
    """A copy of the saved folder whose config names Hub backbones (as `from_backbones` on Hub ids records them)."""
    folder = tmp_path / "hive-tiny"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["_name_or_path"] = "google/vit-base-patch16-224"
    config["text_config"]["_name_or_path"] = "Qwen/Qwen2-0.5B"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def expected_gqa(value: float, limit=None) -> EvalResult:
    args = {"num_examples": 8} if limit is None else {"num_examples": 8, "limit": limit}
    return EvalResult(
        task_type="visual-question-answering", task_name="Visual Question Answering", dataset_type="lmms-lab/GQA",
        dataset_name="GQA (testdev-balanced)", dataset_config="testdev_balanced_instructions", dataset_split="testdev",
        metric_type="accuracy", metric_name="accuracy (official)", metric_config="official", metric_value=value,
        metric_args=args,
    )  # fmt: skip


def expected_mme(metric: str, value: float) -> EvalResult:
    return EvalResult(
        task_type="visual-question-answering", task_name="Visual Question Answering", dataset_type="lmms-lab/MME",
        dataset_name="MME", dataset_split="test", metric_type=metric, metric_name=f"{metric} (official)",
        metric_config="official", metric_value=value, metric_args={"num_examples": 8},
    )  # fmt: skip


def test_card_metadata_and_model_index_equal_the_given_results(hub_ready, tmp_path):
    gqa = results_file(tmp_path, "gqa.json", "gqa", {"accuracy": 61.25}, hub_ready, split="testdev", limit=8)
    mme = results_file(
        tmp_path, "mme.json", "mme", {"perception": 1210.5, "cognition": 287.0, "per_category": {"color": {"acc": 90.0}}}, hub_ready
    )
    assert main(["card", "--model", str(hub_ready), "--results", str(gqa), str(mme), "--license", "apache-2.0",
                 "--repo-id", "hive-org/hive-tiny", "--dataset", "liuhaotian/LLaVA-Instruct-150K"]) == 0  # fmt: skip

    card = ModelCard.load(hub_ready / "README.md")
    assert card.data.eval_results == [
        expected_gqa(61.25, limit=8), expected_mme("perception", 1210.5), expected_mme("cognition", 287.0)
    ]
    assert card.data.model_name == "hive-org/hive-tiny"
    assert card.data.base_model == ["google/vit-base-patch16-224", "Qwen/Qwen2-0.5B"]
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == ("transformers", "image-text-to-text", "apache-2.0")
    assert {"hive", "vision-language", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == ["liuhaotian/LLaVA-Instruct-150K"]

    text = card.text
    assert "| 1 | 1 | 2 |" in text and "| 2 | 3 | 3 |" in text  # level, vision layer, LLM layer
    assert "`paired`" in text
    assert "| GQA (testdev-balanced) | testdev | official | accuracy | 61.25 | 8 |" in text
    assert "| MME | test | official | perception | 1210.50 | 8 |" in text
    assert 'model_id = "hive-org/hive-tiny"' in text
    assert text.count("trust_remote_code=True") >= 3 and 'pipeline("visual-question-answering"' in text
    assert "AutoModel.from_pretrained(model_id, trust_remote_code=True)" in text
    assert "## Limitations" in text and "eprint        = {2604.00086}" in text
    assert "first questions of a benchmark only" in text  # the GQA result has a limit


def test_card_regeneration_is_idempotent_and_replaces_results(hub_ready, tmp_path):
    first = results_file(tmp_path, "gqa.json", "gqa", {"accuracy": 50.0}, hub_ready, split="testdev")
    mme = results_file(tmp_path, "mme.json", "mme", {"perception": 1000.0, "cognition": 200.0}, hub_ready)
    write_model_card(hub_ready, [first, mme], license="apache-2.0")
    once = (hub_ready / "README.md").read_bytes()
    write_model_card(hub_ready, [first, mme])
    assert (hub_ready / "README.md").read_bytes() == once
    write_model_card(hub_ready)
    assert (hub_ready / "README.md").read_bytes() == once  # results and licence are kept, not lost

    second = results_file(tmp_path, "gqa2.json", "gqa", {"accuracy": 55.5}, hub_ready, split="testdev")
    write_model_card(hub_ready, [second])
    card = ModelCard.load(hub_ready / "README.md")
    assert card.data.eval_results == [expected_gqa(55.5), expected_mme("perception", 1000.0), expected_mme("cognition", 200.0)]
    assert card.data.license == "apache-2.0"
    text = (hub_ready / "README.md").read_text()
    assert text.count("model-index:") == 1 and text.count("\n## Evaluation") == 1 and text.count("lmms-lab/GQA") == 1
    assert not [path.name for path in hub_ready.iterdir() if path.name.endswith(".tmp")]

    write_model_card(hub_ready, [mme], keep_results=False)
    assert ModelCard.load(hub_ready / "README.md").data.eval_results == [expected_mme("perception", 1000.0), expected_mme("cognition", 200.0)]


def test_card_refuses_results_of_another_model_and_bad_files(hub_ready, saved, tmp_path):
    other = results_file(tmp_path, "other.json", "gqa", {"accuracy": 70.0}, saved, split="testdev")
    with pytest.raises(ValueError, match="computed on another model"):
        build_model_card(hub_ready, [other])
    assert build_model_card(hub_ready, [other], allow_other_model=True).data.eval_results == [expected_gqa(70.0)]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"benchmark": "gqa", "protocol": "official"}))
    with pytest.raises(ValueError, match=r"broken\.json.*'scores'"):
        build_model_card(hub_ready, [broken])
    nan = results_file(tmp_path, "nan.json", "gqa", {"accuracy": "high"}, hub_ready)
    with pytest.raises(ValueError, match=r"nan\.json.*'accuracy'"):
        build_model_card(hub_ready, [nan])
    with pytest.raises(ValueError, match="ORG/NAME"):
        build_model_card(hub_ready, repo_id="not a repo")


def test_card_without_hub_backbones_or_results_says_so(saved, tmp_path):
    folder = tmp_path / "local"
    shutil.copytree(saved, folder)
    card = build_model_card(folder)
    assert card.data.base_model is None and card.data.eval_results is None and card.data.license == "other"
    assert "`base_model` leaves out the vision and text backbones" in card.text
    assert "Not evaluated yet" in card.text and "No training record was found" in card.text
    assert template_path().name == "hive_template.md"
    assert "| Cross-attention blocks | 2 (gates start at" in card.text and "shared_softmax" not in card.text
    # A shared-softmax model's card says how it fuses, and claims no gates.
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "cross_attention_mode": "shared_softmax"}))
    card = build_model_card(folder)
    assert "| Fusion | `shared_softmax`" in card.text and "tanh(gate)" not in card.text


def _front_matter_and_sections(text: str) -> tuple[list[str], dict[str, str]]:
    """A card's front matter lines, and its body cut at each `## ` heading (the title and introduction under "")."""
    _, front_matter, body = text.split("---\n", 2)
    sections = {}
    for index, part in enumerate(body.split("\n## ")):
        heading, _, content = part.partition("\n") if index else ("", "", part)
        sections[heading] = content
    return front_matter.splitlines(), sections


def test_processor_card_and_model_card_come_from_one_builder(saved, processor, tmp_path):
    # A processor's card is titled HIVE, never after its folder, which is often a temporary one (written aside, renamed)
    processor.save_pretrained(tmp_path / ".processor.partial")
    saved_card = (tmp_path / ".processor.partial" / "README.md").read_text()
    assert "\n# HIVE\n" in saved_card and "partial" not in saved_card
    # Both cards titled hive-tiny (the model's folder name): the same title and usage example.
    written_lines, written = _front_matter_and_sections(str(processor.model_card("hive-tiny")))
    built_lines, built = _front_matter_and_sections(str(build_model_card(saved)))
    # The same front matter, written the same way, less what only the model's folder knows (name, licence, results).
    assert "base_model:" not in written_lines and "license: other" not in written_lines
    assert written_lines == [line for line in built_lines if not line.startswith(("license:", "model_name:"))]
    # The sections every HIVE card has, word for word; each adds its own between the introduction and "How to use".
    for heading in ("", "How to use", "Citation"):
        assert written[heading] == built[heading], heading
    assert written["Processor"].startswith("\nImages go through `ViTImageProcessorPil`")
    assert {"Model", "Training", "Evaluation"} <= set(built) and "Processor" not in built
    written_limitations = written["Limitations"].split("\n- ")
    assert written_limitations == [line for line in built["Limitations"].split("\n- ") if line in written_limitations]
    assert len(built["Limitations"].split("\n- ")) > len(written_limitations)


# --- pushing at the end of training ---------------------------------------------------------------------------


TINY_RECIPE = {
    "name": "hub-tiny",
    "output_dir": "unused",
    "model": {
        "vision_config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "intermediate_size": 64},
        "text_config": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 128},
        "hive": {"cross_attention_layers": [[0, 0], [1, 1]]},
    },
    "data": {
        "tokenizer": "shapes", "max_length": 48, "stage2": {"source": "shapes"}, "stage3": {"source": "shapes"},
        "shapes": {"seed": 0, "image_size": 32, "num_train": 6, "num_validation": 2, "num_test": 2, "num_test_compositional": 2},
    },
    "stage2": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 2, "logging_steps": 1, "use_cpu": True},
    "stage3": {"max_steps": 3, "per_device_train_batch_size": 2, "save_steps": 3, "logging_steps": 1, "use_cpu": True,
               "lora_r": 2, "lora_alpha": 4},
}  # fmt: skip


def test_training_run_writes_the_card_and_pushes_final_only(tmp_path, monkeypatch):
    from hive_vlm.training.pipeline import HiveRecipeRun

    run_dir = tmp_path / "run"
    HiveRecipeRun(parse_recipe(json.loads(json.dumps(TINY_RECIPE))), str(run_dir)).run([2, 3])
    pushed = json.loads(json.dumps(TINY_RECIPE))
    pushed["stage3"].update(push_to_hub=True, hub_model_id="hive-org/hive-tiny", hub_token=FAKE_TOKEN, hub_private_repo=True)
    recipe = parse_recipe(pushed)

    uploads = []

    def recording_push(folder, **kwargs):
        uploads.append((folder, kwargs))
        return SimpleNamespace(pr_url=None, commit_url="https://hub.invalid/commit")

    monkeypatch.setattr("hive_vlm.hub.push.push_folder", recording_push)
    push_training_run(recipe, run_dir, [2, 3])
    assert uploads == [
        (run_dir / "final", {"repo_id": "hive-org/hive-tiny", "private": True, "revision": None, "token": FAKE_TOKEN, "endpoint": None})
    ]
    monkeypatch.undo()

    card = ModelCard.load(run_dir / "final" / "README.md")
    assert card.data.model_name == "hive-org/hive-tiny"
    assert "Recipe `hub-tiny`" in card.text
    assert "| 2. Hierarchical alignment | cross-attention, projectors (LLM frozen) | 2 of 2 |" in card.text
    assert "| 3. Joint fine-tuning | vision encoder, cross-attention, projectors, LLM through LoRA (r=2) | 3 of 3 |" in card.text
    assert "`lora_r=2`" in card.text and "hub_model_id" not in card.text
    record = json.loads((run_dir / "hive_training.json").read_text())
    assert record["stages"]["3"]["hub_model_id"] == "hive-org/hive-tiny" and "hub_token" not in record["stages"]["3"]
    assert not [path for path in run_dir.rglob("*") if path.is_file() and FAKE_TOKEN.encode() in path.read_bytes()]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    before = snapshot(run_dir / "final")
    with pytest.raises(RuntimeError, match=f"hive-org/hive-tiny at {UNREACHABLE}"):
        push_training_run(recipe, run_dir, [2, 3], endpoint=UNREACHABLE)
    assert snapshot(run_dir / "final") == before


def test_training_push_settings_are_checked_before_training():
    values = json.loads(json.dumps(TINY_RECIPE))
    assert hub_settings(parse_recipe(values), [2, 3]) is None
    values["stage2"]["push_to_hub"] = True
    with pytest.raises(ValueError, match="stage2.hub_model_id"):
        hub_settings(parse_recipe(values), [2, 3])
    values["stage2"]["hub_model_id"] = "not/a/repo"
    with pytest.raises(ValueError, match="ORG/NAME"):
        hub_settings(parse_recipe(values), [2])
    values["stage2"]["hub_model_id"] = "hive-org/hive-tiny"
    assert hub_settings(parse_recipe(values), [2, 3])["repo_id"] == "hive-org/hive-tiny"
    assert hub_settings(parse_recipe(values), [3]) is None
