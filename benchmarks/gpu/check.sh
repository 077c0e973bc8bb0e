#!/usr/bin/env bash
# The GPU checks of issues 5 and 6, in one run of about 6 minutes on one GPU (estimated).
#
# Here (CPU):     bash benchmarks/gpu/wheels.sh
# There (device tool):  run(command="bash benchmarks/gpu/check.sh", carry=[".whl"],
#                           timeout_s=600)
#
# Writes to $OUT (or ./gpu-out): gpu.txt (device, torch), tests.log (tests/test_cuda.py),
# bench.log (every `tuner bench` table) and bench.jsonl (the same runs, one JSON each):
#   1. the fast trial engine on synthetic 200k x 128 in fp32, bf16 and fp16, and fp32
#      with torch.compile: samples/s, fraction of matmul peak, ratio to the baseline;
#   2. the fused engine with K = 256 against the sequential engine (trials/s);
#   3. the fused engine with K = 32 on digits (the CPU target's setting, for comparison).
#
# A dry run of the plumbing on a CPU: DEVICE=cpu QUICK=1 bash benchmarks/gpu/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-out}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import optuna, sqlalchemy" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, optuna; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'optuna', optuna.__version__, torch.cuda.get_device_name())"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

TUNER_TEST_DEVICE="$DEVICE" timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
    2>&1 | tee "$OUT/tests.log" | tail -15

bench() {  # a label, then `tuner bench` options
    local label=$1; shift
    local start=$(( $( (cat "$OUT/bench.log" 2>/dev/null || true) | wc -l) + 1 ))
    echo "== $label: tuner bench $*" >> "$OUT/bench.log"
    timeout 240 python3 -m tuner bench --device "$DEVICE" "$@" --json > "$OUT/run.json" \
        2>> "$OUT/bench.log" || echo "   (failed or timed out: $?)" | tee -a "$OUT/bench.log"
    python3 - "$label" "$OUT/run.json" "$OUT/bench.jsonl" >> "$OUT/bench.log" <<'PY'
import json, sys
label, path, jsonl = sys.argv[1:]
try:
    report = json.load(open(path))
except (OSError, ValueError):
    sys.exit(0)
report["label"] = label
open(jsonl, "a").write(json.dumps(report) + "\n")
print(f"   peak {report['matmul_peak'] / 1e12:.1f} TFLOP/s, step "
      f"{report['train_flops_per_sample'] / 1e3:.1f} kFLOP/sample")
for row in report["rows"]:
    print(f"   {row['variant']:<13} {row['epochs_per_s']:9.2f} epochs/s "
          f"{row['samples_per_s']:11.0f} samples/s {row['trials_per_s']:8.3f} trials/s "
          f"storage {row['storage_pct']:5.1f}% best {row['best_value']:.4f} "
          f"peak {100 * row['peak_fraction']:6.3f}% speedup {row['speedup']:6.2f}x")
PY
    tail -n "+$start" "$OUT/bench.log"
}
if [ -n "$QUICK" ]; then  # sizes for a dry run
    BIG=(--dataset classification --samples 2000 --features 16 --trials 2 --epochs 1)
    K=8; SMALL=2000; DIGITS=(--trials 8 --epochs 1 --population 8)
else
    BIG=(--dataset classification --samples 200000 --features 128 --trials 2 --epochs 2)
    K=256; SMALL=5000; DIGITS=(--trials 64 --epochs 5 --population 32)
fi
bench fp32 "${BIG[@]}"
bench bf16 "${BIG[@]}" --precision bf16
bench fp16 "${BIG[@]}" --precision fp16
bench compile "${BIG[@]}" --compile
bench "k$K" --dataset classification --samples "$SMALL" --features 64 --trials "$K" \
    --epochs 2 --population "$K"
bench digits "${DIGITS[@]}"
rm -f "$OUT/run.json"
