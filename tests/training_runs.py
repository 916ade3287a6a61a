"""`hive train` as a subprocess, and the recipe overrides that make a whole tiny run short (test_training, test_fsdp)."""

import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.shapes.num_train=64", "stage1.max_steps=3", "stage2.max_steps=3", "stage3.max_steps=3", "stage1.save_steps=2",
         "stage2.save_steps=2", "stage3.save_steps=2"]  # fmt: skip


def hive_train(args, cwd=REPO, env=None, wait=True):
    command = [sys.executable, "-m", "hive_vlm.cli", "train", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
