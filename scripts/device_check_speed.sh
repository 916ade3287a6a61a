#!/usr/bin/env bash
# The speed check of issue 27 that needs a GPU, in one command, for a session lent one (see docs/performance.md).
#
# Runs `hive bench --compile --sweep` at `base` in bfloat16 on one GPU: HIVE (gated and shared-softmax) and LLaVA decode
# steps compiled as generate(cache_implementation="static") compiles them (CUDA graphs), timed in the same rounds; the
# batch sweep; the bandwidth and matmul rooflines. Prints one line per ratio and per roofline fraction, and keeps the
# JSON and the log in OUT. Without a GPU it runs on the CPU (float32, compiled without CUDA graphs) at the size given.
#
#   bash scripts/device_check_speed.sh [SIZE] [OUT]     # SIZE: base (default, GPU only), small or toy
#   SWEEP=0 bash scripts/device_check_speed.sh          # without the batch sweep (fewer compiles, if time is short)
#   SYNC=0 bash scripts/device_check_speed.sh           # without the decode sync check (scripts/decode_sync_check.py)
#
# Needs torch, transformers >= 5.23 and this project (installed, or installed here without dependencies). The lent GPU
# machines have no package index and an older transformers: carry the wheels docs/performance.md lists in .whl/, and
# they are installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-base}
OUT=${2:-outputs/device-check-speed}
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PYTHON" -c "import hive_vlm.bench.benchmark" 2> /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/hive-site .
  export PYTHONPATH=/tmp/hive-site${PYTHONPATH:+:$PYTHONPATH}
fi
read -r DEVICE DTYPE REPEATS < <("$PYTHON" -c "import torch; print('cuda bfloat16 3' if torch.cuda.is_available() else 'cpu float32 3')")
if [ "$DEVICE" = cpu ] && [ "$SIZE" = base ]; then
  echo "no GPU visible: base is a GPU check; give toy or small to run it on the CPU"
  exit 1
fi
"$PYTHON" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}, ' + (torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'))"
mkdir -p "$OUT"
JSON="$OUT/hive-bench-$SIZE.json"
SWEEP_FLAG=$([ "${SWEEP:-1}" = 0 ] || echo --sweep)
started=$SECONDS
"$PYTHON" -m hive_vlm.cli bench --size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --repeats "$REPEATS" --compile $SWEEP_FLAG --out "$JSON" \
  > "$OUT/hive-bench-$SIZE.log" 2>&1 || { tail -n 40 "$OUT/hive-bench-$SIZE.log"; echo "hive bench: FAILED (see $OUT/hive-bench-$SIZE.log)"; exit 1; }
"$PYTHON" - "$JSON" <<'PY'
import json, sys

result = json.load(open(sys.argv[1]))
for key, target in result["targets"].items():
    print(f"eager {key} (HIVE/LLaVA): {result[key]:.3f} (target {target['comparison']} {target['bound']:g})")
for key, value in result["shared_softmax"].items():
    print(f"eager shared-softmax/gated {key}: {value:.3f}")
compiled = result["compiled"]
for key, value in compiled["ratios"].items():
    print(f"compiled {key}: {value:.3f}")
for key, sides in compiled["speedup_over_eager"].items():
    print(f"compiled/eager decode speed, {key}: " + ", ".join(f"{name} {value:.2f}x" for name, value in sides.items()))
roofline = result["roofline"]
print(f"copy bandwidth (read + written): {roofline['copy_bytes_per_s'] / 1e9:,.1f} GB/s")
for mode, counts in roofline["decode_fraction_of_bandwidth"].items():
    for key, sides in counts.items():
        print(f"{mode} decode {key}, batch 1, fraction of the bandwidth limit: " + ", ".join(f"{name} {value:.4f}" for name, value in sides.items()))
print(f"eager prefill (HIVE), fraction of the matmul peak: {roofline['prefill_fraction_of_matmul_peak']:.4f}")
print(f"eager stage-2 step (HIVE, batch {result['sizes']['train_batch_size']}), fraction of the matmul peak: {roofline['train_step_fraction_of_matmul_peak']:.4f}")
sweep = result.get("sweep", {"decode": {}})
for key, row in sweep["decode"].items():
    batches = ", ".join(f"{name} {batch}" for name, batch in row["batch_sizes"].items())
    print(f"sweep decode batch {key} ({batches}): HIVE/LLaVA tokens/s {row['hive_llava_ratio']:.3f}; fraction of the bandwidth limit "
          + ", ".join(f"{name} {value:.4f}" for name, value in row["fraction_of_bandwidth"].items()))
if "train" in sweep:
    train = sweep["train"]
    print(f"sweep stage-2 at the largest batch ({', '.join(f'{n} {b}' for n, b in train['batch_sizes'].items())}): HIVE/LLaVA samples/s "
          f"{train['hive_llava_ratio']:.3f}; HIVE fraction of the matmul peak {train['hive_fraction_of_matmul_peak']:.4f}")
compile_s = sum(seconds for measure in compiled["compile_s"].values() for seconds in measure.values())
breaks = {name: counts["graph_breaks"] for name, counts in compiled["dynamo"]["576"].items()}
print(f"compile (first runs, not timed): {compile_s:.0f} s at batch 1; graph breaks in a decode step: {breaks}; bench {result['settings']['elapsed_s']:.0f} s")
PY
if [ "${SYNC:-1}" != 0 ]; then
  # Compiled decode steps under torch.cuda.set_sync_debug_mode("error"): one line per fusion.
  "$PYTHON" scripts/decode_sync_check.py --size "$SIZE" 2>> "$OUT/decode-sync-check.log" || echo "decode sync check: FAILED (see $OUT/decode-sync-check.log)"
fi
echo "done in $((SECONDS - started)) s; $JSON"
