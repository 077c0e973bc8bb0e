#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 in one run on one GPU, planned to end inside a
# device call's 10 minutes: every step is cut at STOP seconds from the start (570 by
# default), and a step that would have under 30 seconds left is skipped.
#
# Here (CPU):  bash benchmarks/gpu/wheels.sh      (Optuna and its database stack, as wheels)
# There:       the device tool's run, command "bash benchmarks/gpu/check.sh", carry [".whl"],
#              timeout_s 600
# A dry run of the plumbing on a CPU: DEVICE=cpu QUICK=1 bash benchmarks/gpu/check.sh
#
# Writes to $OUT (or ./gpu-out): gpu.txt (device, torch), tests.log (tests/test_cuda.py),
# bench.log (a summary line per variant of every `tuner bench` run, and its stderr) and
# bench.jsonl (each run's JSON). In order of importance:
#   1. the fast trial engine on synthetic 200k x 128, fp32: samples/s, fraction of the
#      matmul peak, ratio to the baseline (issue 5's GPU target, >= 3x);
#   2. the fused engine with K = 256 against the sequential engine (issue 6's, trials/s
#      >= 30x) and its fraction of the peak (the longest run: a few minutes);
#   3. the same as 1 in bf16, fp16 and compiled: whether each pays on a GPU;
#   4. the fused engine with K = 32 on digits, the CPU target's setting.
# A shorter device allowance: STOP=<seconds left> (what has finished comes back).
# Exits non-zero when the device is not there, a test fails or a run fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-out}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-}"
STOP="${STOP:-570}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import optuna, sqlalchemy" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
{ if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version \
      --format=csv; fi
  python3 -c "import torch, optuna; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'optuna', optuna.__version__)"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
if [ "$DEVICE" = cuda ] && ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"
then
    echo "no CUDA device visible to torch" >&2
    exit 1
fi
status=0

TUNER_TEST_DEVICE="$DEVICE" timeout "$(( STOP < 180 ? STOP : 180 ))" python3 -m pytest -q -rs -p no:cacheprovider \
    -o addopts="" tests/test_cuda.py > "$OUT/tests.log" 2>&1
tests=$?
tail -n 15 "$OUT/tests.log"
[ "$tests" -eq 0 ] || status=1

bench() {  # a label, then `tuner bench` options
    local label=$1; shift
    local left=$(( STOP - SECONDS ))
    if [ "$left" -lt 30 ]; then
        echo "== $label: skipped, ${left}s left of ${STOP}s" | tee -a "$OUT/bench.log"
        status=1
        return
    fi
    local start=$(( $( (cat "$OUT/bench.log" 2>/dev/null || true) | wc -l) + 1 ))
    echo "== $label: tuner bench --device $DEVICE $*" >> "$OUT/bench.log"
    if ! timeout "$left" python3 -m tuner bench --device "$DEVICE" "$@" --json \
            > "$OUT/run.json" 2>> "$OUT/bench.log"; then
        echo "   (failed or timed out)" >> "$OUT/bench.log"
        status=1
    fi
    python3 - "$label" "$OUT/run.json" "$OUT/bench.jsonl" >> "$OUT/bench.log" <<'PY'
import json, sys
label, path, jsonl = sys.argv[1:]
try:
    report = json.load(open(path))
except (OSError, ValueError):
    sys.exit(0)
report["label"] = label
open(jsonl, "a").write(json.dumps(report) + "\n")
print(f"   peak {report['matmul_peak'] / 1e12:.2f} TFLOP/s, step "
      f"{report['train_flops_per_sample'] / 1e3:.1f} kFLOP/sample")
rows = {row["variant"]: row for row in report["rows"]}
for row in report["rows"]:
    print(f"   {row['variant']:<13} {row['epochs_per_s']:9.2f} epochs/s "
          f"{row['samples_per_s']:11.0f} samples/s {row['trials_per_s']:8.3f} trials/s "
          f"storage {row['storage_pct']:5.1f}% best {row['best_value']:.4f} "
          f"peak {100 * row['peak_fraction']:6.3f}% speedup {row['speedup']:6.2f}x")
if "tuner-fused" in rows:
    ratio = rows["tuner-fused"]["trials_per_s"] / rows["tuner-sqlite"]["trials_per_s"]
    print(f"   tuner-fused / tuner-sqlite: {ratio:.2f}x trials/s")
PY
    tail -n "+$start" "$OUT/bench.log"
}
if [ -n "$QUICK" ]; then  # sizes for a dry run
    BIG=(--dataset classification --samples 2000 --features 16 --trials 2 --epochs 1)
    FUSED=(--dataset classification --features 64 --trials 8 --epochs 1 --population 8)
    DIGITS=(--trials 8 --epochs 1 --population 8)
else
    BIG=(--dataset classification --samples 200000 --features 128 --trials 2 --epochs 2)
    # 2,400 training rows, 10 epochs (380 steps a trial): training, not the ~3.6 ms of
    # Optuna's protocol per trial (ask, suggest, tell and the tuner's rows, measured on
    # a CPU), is most of a fused trial's time; the sequential variants take about a
    # minute each for their 256 trials.
    FUSED=(--dataset classification --samples 4000 --features 64 --trials 256 --epochs 10
           --population 256)
    DIGITS=(--trials 64 --epochs 5 --population 32)
fi
bench fp32 "${BIG[@]}"
bench fused "${FUSED[@]}"
bench bf16 "${BIG[@]}" --precision bf16
bench fp16 "${BIG[@]}" --precision fp16
bench compile "${BIG[@]}" --compile
bench digits "${DIGITS[@]}"
rm -f "$OUT/run.json"
echo "done in ${SECONDS}s, status $status"
exit "$status"
