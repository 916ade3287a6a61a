"""FSDP2 through accelerate on 2 CPU processes (gloo): every stage, equal results, frozen weights, kill and resume.

accelerate offers FSDP on accelerator devices only. `scripts/fsdp_on_cpu.py` lifts that one gate, so that the rest runs
unchanged on CPUs: accelerate's `fully_shard` wrapping (by `_no_split_modules`, from `configs/fsdp.yaml`) and the
Trainer's FSDP saving and resuming. A run is known to be sharded by what only FSDP writes: `pytorch_model_fsdp.bin` in
its checkpoints.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from training_runs import REPO, SMALL, hive_train


pytestmark = pytest.mark.slow
FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/fsdp.yaml", "scripts/fsdp_on_cpu.py"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def fsdp_train(args, wait=True):
    """`hive train` on 2 FSDP processes; its own session, so that a kill reaches the launcher and both workers."""
    process = subprocess.Popen([*FSDP, "train", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    if not wait:
        return process
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    return stderr


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """All three stages of tiny-shapes under FSDP, stage 3 with LoRA."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    fsdp_train(["--recipe", "recipes/tiny-shapes.yaml", "--output-dir", str(out), *SMALL])
    return out


def test_every_stage_runs_sharded_and_final_loads_in_one_process(run):
    for stage in (1, 2, 3):
        assert (run / f"stage{stage}" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file(), stage  # FSDP's own format
    for folder in ("stage1/model", "stage2/model", "stage3/adapter", "stage3/base", "stage3/model", "final"):
        assert (run / folder).is_dir(), folder
    # final/ is a normal HIVE folder: HIVE's code (not torch's FSDP files) and an auto_map pointing at it.
    assert (run / "final" / "modeling_hive.py").is_file() and not list((run / "final").glob("_fsdp*.py"))
    auto_map = json.loads((run / "final" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_hive.HiveForConditionalGeneration"
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(run / "final", trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 6]]), pixel_values=torch.randn(1, 3, 32, 32)).logits
    assert torch.isfinite(logits).all()
    # Stage 2 kept the encoder and the LLM bit-identical inside the same sharded modules.
    stage2 = weights(run / "stage2" / "model")
    encoder = weights(run / "stage1" / "model")
    llm = {name.removeprefix("model."): tensor for name, tensor in weights(run / "backbones" / "text").items() if name.startswith("model.")}
    shared = [name for name in encoder if f"model.vision_model.{name}" in stage2]
    assert len(shared) > 20 and all(torch.equal(stage2[f"model.vision_model.{name}"], encoder[name]) for name in shared)
    assert len(llm) > 20 and all(torch.equal(stage2[f"model.language_model.{name}"], tensor) for name, tensor in llm.items())


def test_stage3_with_the_llm_frozen_runs_sharded(run, tmp_path):
    frozen = tmp_path / "frozen"
    shutil.copytree(run, frozen, ignore=shutil.ignore_patterns("stage3", "final"))
    fsdp_train(["--recipe", "recipes/tiny-shapes.yaml", "--stage", "3", "--output-dir", str(frozen), *SMALL, "stage3.lora_r=0"])
    assert (frozen / "stage3" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    stage2, stage3 = weights(frozen / "stage2" / "model"), weights(frozen / "stage3" / "model")
    llm = [name for name in stage2 if name.startswith("model.language_model.")]
    assert llm and all(torch.equal(stage3[name], stage2[name]) for name in llm)
    assert not torch.equal(stage3["model.cross_attention_layers.0.cross_attn.q_proj.weight"],
                           stage2["model.cross_attention_layers.0.cross_attn.q_proj.weight"])  # fmt: skip


def test_two_fsdp_processes_match_one_process_at_the_same_global_batch(tmp_path):
    # SGD, as in the DDP test (test_training.py): Adam would turn float noise in near-zero gradients into whole steps.
    common = ["--recipe", "recipes/tiny-shapes.yaml", "--stage", "2", "data.shapes.num_train=64", "stage2.max_steps=3",
              "stage2.train_sampling_strategy=sequential", "stage2.save_strategy='no'", "stage2.optim=sgd",
              "stage2.learning_rate=0.5", "model.hive.gate_init=0.3"]  # fmt: skip
    hive_train([*common, "--output-dir", str(tmp_path / "one"), "stage2.per_device_train_batch_size=8"])
    fsdp_train([*common, "--output-dir", str(tmp_path / "two"), "stage2.per_device_train_batch_size=4"])
    one, two = weights(tmp_path / "one" / "stage2" / "model"), weights(tmp_path / "two" / "stage2" / "model")
    assert one.keys() == two.keys()
    for name in one:  # sharded reduce-scatter sums in another order than one process: ~1e-8 after 3 steps
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_sharded_run_killed_twice_resumes_to_the_uninterrupted_weights(tmp_path):
    args = ["--recipe", "recipes/tiny-shapes.yaml", "--stage", "2", "data.shapes.num_train=64", "stage2.max_steps=8",
            "stage2.save_steps=2", "stage2.per_device_train_batch_size=4"]  # fmt: skip
    fsdp_train([*args, "--output-dir", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    rng = random.Random(0)
    for attempt in range(2):  # SIGKILL to the launcher and both workers, at a random moment after a checkpoint began
        process = fsdp_train([*args, "--output-dir", str(killed), *(["--resume"] if attempt else [])], wait=False)
        deadline = time.time() + 300
        start = {path.name for path in (killed / "stage2").glob("checkpoint-*")}
        while {path.name for path in (killed / "stage2").glob("checkpoint-*")} <= start and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    fsdp_train([*args, "--output-dir", str(killed), "--resume"])
    straight, resumed = weights(tmp_path / "straight" / "stage2" / "model"), weights(killed / "stage2" / "model")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5, msg=name)
    # The optimizer holds state for the trainable weights only: the projectors and the cross-attention blocks.
    optimizer = torch.load(tmp_path / "straight" / "stage2" / "checkpoint-2" / "optimizer.bin", weights_only=True)
    names = set(optimizer["state"])
    assert names and all(name.startswith(("model.multi_modal_projectors.", "model.cross_attention_layers.")) for name in names)
    assert names == {name for name in straight if name.startswith(("model.multi_modal_projectors.", "model.cross_attention_layers."))}


def test_each_process_holds_about_half_of_the_parameters():
    result = subprocess.run([*FSDP, "parameter-bytes"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(rank["rank"] for rank in ranks) == [0, 1] and all(rank["distributed_type"] == "DistributedType.FSDP" for rank in ranks)
    for rank in ranks:
        assert 0.45 < rank["local_bytes"] / rank["whole_bytes"] < 0.55, rank
