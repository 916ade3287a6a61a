#!/usr/bin/env bash
# The sharding checks that need a GPU, in one command, for a session lent one (see docs/training.md).
#
# On CPUs, FSDP2 runs through scripts/fsdp_on_cpu.py and is tested (tests/test_fsdp.py); DeepSpeed does not run there
# (accelerate drops DeepSpeed for use_cpu runs, and without use_cpu the Trainer and DeepSpeed disagree on the world size).
# This runs stage 2 of recipes/tiny-shapes.yaml on every visible GPU with FSDP2 (no shim), ZeRO-2 and ZeRO-3, and
# compares each with one process at the same global batch (SGD, as the CPU tests), then loads each final/ in one process.
# Needs: the project installed with its deepspeed extra (pip install ".[deepspeed]") and torch with CUDA.
#
#   bash scripts/device_check_sharding.sh [OUT]     # prints one line per check and exits non-zero on a failure
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/device-check-sharding}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$GPUS" -ge 1 ] || { echo "no GPU visible"; exit 1; }
PER_DEVICE=$((8 / GPUS))
COMMON=(--recipe recipes/tiny-shapes.yaml --stage 2 data.shapes.num_train=64 stage2.max_steps=3 stage2.use_cpu=false
        stage2.train_sampling_strategy=sequential "stage2.save_strategy='no'" stage2.optim=sgd stage2.learning_rate=0.5
        model.hive.gate_init=0.3)
rm -rf "$OUT"
python -m hive_vlm.cli train "${COMMON[@]}" --output-dir "$OUT/one" stage2.per_device_train_batch_size=8
for engine in fsdp deepspeed-zero2 deepspeed-zero3; do
  python -m accelerate.commands.launch --config_file "configs/$engine.yaml" --num_processes "$GPUS" \
    -m hive_vlm.cli train "${COMMON[@]}" --output-dir "$OUT/$engine" "stage2.per_device_train_batch_size=$PER_DEVICE" \
    > "$OUT/$engine.log" 2>&1 && echo "$engine: ran" || { echo "$engine: FAILED (see $OUT/$engine.log)"; continue; }
  python - "$OUT" "$engine" <<'PY'
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
out, engine = Path(sys.argv[1]), sys.argv[2]
one, many = load_file(out / "one/stage2/model/model.safetensors"), load_file(out / engine / "stage2/model/model.safetensors")
gap = max((one[k].float() - many[k].float()).abs().max().item() for k in one) if one.keys() == many.keys() else float("inf")
model = AutoModelForImageTextToText.from_pretrained(out / engine / "final", trust_remote_code=True)
print(f"{engine}: largest weight difference from one process {gap:.2e} ({'ok' if gap < 1e-4 else 'DIFFERENT'}); final/ loads as {type(model).__name__}")
sys.exit(0 if gap < 1e-4 else 1)
PY
done
