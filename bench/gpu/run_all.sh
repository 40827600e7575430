#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one go, each step time-boxed, each writing its results into OUT_DIR.
#
#   bash bench/gpu/run_all.sh OUT_DIR            # on the GPU machine (bench/gpu/README.md: how to send it there)
#
# Steps, in order of importance (a run cut short keeps the first ones), with their time boxes in seconds:
#   setup        60  carried wheels into a target dir (install_wheels.py); local models adopted; benchmark
#                    models built (the ~200M-parameter one included); environment.json, nvidia-smi.txt
#   tests       100  the `gpu`-marked tests (pytest -m gpu -s): junit XML in gpu_tests.xml, output in tests.txt
#   reward      140  reward service on CUDA, anchor and large model, bfloat16 and float32, 1/32/128 clients:
#                    served vs in-process best vs one forward per request, p50/p99, bf16-vs-fp32 agreement
#                    (serve_matrix.py -> reward_service.json)
#   training     45  GRPO with transformers rollouts, 1 warm-up + 4 timed steps on CUDA and on the CPU
#                    (trainer_vs_trl.py --no-trl -> training.json)
#   uncertainty  70  scalar vs the 5-head ensemble on CUDA, bfloat16, 1 and 32 clients, a service started per
#                    figure (uncertainty_cost.py -> uncertainty.json)
#   judge        40  the judge on hf (CUDA, bfloat16) with prefix sharing off and on (judge_throughput.py)
# The boxes add up to 455 s; the steps are expected to take about 320 s. With the machine's start (minutes) the
# whole fits the ~10 minutes of GPU time issue 14 allows, leaving time for one rerun of a step:
#   STEPS=reward bash bench/gpu/run_all.sh OUT_DIR
#
# Without CUDA (a rehearsal, bench/gpu/rehearse.sh) every step still runs its code on the CPU, cut down to
# seconds, and says so: the gpu tests are skipped by tests/conftest.py, the large model is built but not driven,
# and every figure is labelled as the CPU's (they are not GPU figures and must never be reported as such).
#
# Environment: PYTHON (python3), WHEELS (bench/gpu/wheels), SITE (where wheels install; never under OUT_DIR,
# whose files all travel back), STEPS (comma-separated subset), TOTAL_BUDGET_S (455: no step starts after it),
# REHEARSAL_BOX_SCALE (4: the time boxes of a rehearsal are this many times the GPU run's).
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash bench/gpu/run_all.sh OUT_DIR" >&2
  exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$1/logs"
OUT=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$REPO/bench/gpu/wheels}
SITE=${SITE:-${TMPDIR:-/tmp}/rewardline-gpu-site}
STEPS=${STEPS:-setup,tests,reward,training,uncertainty,judge}
STARTED=$(date +%s)
cd "$REPO" || exit 2

export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1

CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$CUDA" = 1 ]; then
  DEVICE=cuda
  MODE=gpu
  SCALE=1
else
  DEVICE=cpu
  MODE=rehearsal
  # a shared 2-core machine builds and loads models several times slower than the GPU machine's 16 cores
  SCALE=${REHEARSAL_BOX_SCALE:-4}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # and is shared: one thread per process
  echo "REHEARSAL: no CUDA device. Every step runs its code on the CPU, cut down to seconds; what needs a GPU is"
  echo "skipped and says so. Time boxes x$SCALE. The figures are CPU figures of a rehearsal, NOT GPU results."
fi
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-$((455 * SCALE))}
echo "{\"mode\": \"$MODE\", \"device\": \"$DEVICE\"}" > "$OUT/mode.json"
: > "$OUT/steps.jsonl"

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

# step NAME BUDGET_S COMMAND...: runs COMMAND under `timeout`, output to OUT/NAME.txt, one status line here and
# one JSON line in OUT/steps.jsonl.
step() {
  local name=$1 budget=$(($2 * SCALE))
  shift 2
  if ! wanted "$name"; then
    return 0
  fi
  local left=$((TOTAL_BUDGET_S - ($(date +%s) - STARTED)))
  local box=$((budget < left ? budget : left))
  if [ "$box" -lt 15 ]; then
    echo "step $name: SKIPPED (only ${left}s of the ${TOTAL_BUDGET_S}s budget left)"
    echo "{\"step\": \"$name\", \"status\": \"skipped: out of time\", \"budget_s\": $budget}" >> "$OUT/steps.jsonl"
    return 0
  fi
  local t0 rc status
  t0=$(date +%s)
  echo "step $name: running (time box ${box}s) ..."
  # the steps are functions of this script: run each in a bash of its own, so that `timeout` can end it
  timeout --kill-after=10 "$box" bash -c "$*" > "$OUT/$name.txt" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${box}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  local took=$(($(date +%s) - t0))
  echo "step $name: $status in ${took}s -> $name.txt"
  if [ "$rc" != 0 ]; then
    tail -n 25 "$OUT/$name.txt" | sed 's/^/    /'
  fi
  echo "{\"step\": \"$name\", \"status\": \"$status\", \"exit\": $rc, \"seconds\": $took, \"budget_s\": $budget, \"box_s\": $box}" >> "$OUT/steps.jsonl"
}

setup() {
  if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    "$PYTHON" bench/gpu/install_wheels.py "$WHEELS" "$SITE" || return 1
  else
    echo "no carried wheels in $WHEELS: the machine's own packages (and an installed rewardline) must do"
  fi
  "$PYTHON" - "$OUT/environment.json" <<'EOF' || return 1
import json, platform, sys
import torch, transformers
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "transformers": transformers.__version__}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}
print(json.dumps(info))
open(sys.argv[1], "w").write(json.dumps(info, indent=2) + "\n")
EOF
  if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; fi
  "$PYTHON" bench/gpu/gpu_models.py "$OUT/setup.json"
}

tests() {
  local files
  files=$(grep -l "pytest.mark.gpu" tests/test_*.py)
  echo "gpu-marked test files: $files"
  # shellcheck disable=SC2086  # one word per file
  "$PYTHON" -m pytest -m gpu -rs -s -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" $files
}

reward() {
  if [ "$MODE" = gpu ]; then
    "$PYTHON" bench/gpu/serve_matrix.py --out "$OUT" --device cuda --models anchor,large --dtypes bfloat16,float32 \
      --clients 1,32,128 --seconds 3 --warmup 1 --in-process-seconds 1
  else
    echo "REHEARSAL on the CPU: anchor model only (the 200M-parameter one is built, not driven), 1 and 4 clients, 2 s, 64 samples"
    "$PYTHON" bench/gpu/serve_matrix.py --out "$OUT" --device cpu --models anchor --dtypes float32,bfloat16 \
      --clients 1,4 --seconds 2 --warmup 1 --in-process-seconds 0.3 --pool 64
  fi
}

training() {
  # one synchronous run per device, where the benchmark also knows asynchronous rollouts and added reward latency
  local only=()
  if "$PYTHON" bench/trainer_vs_trl.py --help | grep -q -- "--modes"; then only=(--modes sync --latency-ms 0); fi
  if [ "$MODE" = gpu ]; then
    "$PYTHON" bench/trainer_vs_trl.py --no-trl --engines hf --devices cuda,cpu --warmup 1 --steps 4 \
      --prompts-per-step 8 --n 8 --max-new-tokens 16 --threads 16 ${only[@]+"${only[@]}"} --json "$OUT/training.json"
  else
    echo "REHEARSAL on the CPU: the CPU run only (no CUDA run to compare it with), 1 warm-up + 2 small steps"
    "$PYTHON" bench/trainer_vs_trl.py --no-trl --engines hf --devices cpu --warmup 1 --steps 2 \
      --prompts-per-step 2 --n 4 --max-new-tokens 8 --threads 1 ${only[@]+"${only[@]}"} --json "$OUT/training.json"
  fi
}

uncertainty() {
  if [ "$MODE" = gpu ]; then
    "$PYTHON" bench/uncertainty_cost.py --device cuda --dtype bfloat16 --clients 1,32 --repeats 1 --checkpoints "" \
      --seconds 3 --interleaved-samples 256 --json "$OUT/uncertainty.json"
  else
    echo "REHEARSAL on the CPU: 1 and 4 clients, 1 s each, 16 interleaved samples"
    "$PYTHON" bench/uncertainty_cost.py --device cpu --dtype float32 --clients 1,4 --repeats 1 --checkpoints "" \
      --seconds 1 --interleaved-samples 16 --json "$OUT/uncertainty.json"
  fi
}

judge() {
  if [ "$MODE" = gpu ]; then
    "$PYTHON" bench/judge_throughput.py --backends hf --device cuda --dtype bfloat16 --clients 4 --group-size 8 \
      --seconds 4 --threads 4 --json "$OUT/judge.json"
  else
    echo "REHEARSAL on the CPU: hf only (vLLM is not on the GPU machine), 1 s per configuration"
    "$PYTHON" bench/judge_throughput.py --backends hf --device cpu --dtype float32 --clients 2 --group-size 4 \
      --seconds 1 --threads 1 --json "$OUT/judge.json"
  fi
}

export REPO OUT PYTHON WHEELS SITE MODE DEVICE
export -f setup tests reward training uncertainty judge
step setup 60 setup
step tests 100 tests
step reward 140 reward
step training 45 training
step uncertainty 70 uncertainty
step judge 40 judge

echo
echo "=== summary ($MODE, $(($(date +%s) - STARTED))s) ==="
cat "$OUT/steps.jsonl"
if [ -f "$OUT/tests.txt" ]; then
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|skipped|max \|" "$OUT/tests.txt" | tail -n 40
fi
for name in reward training uncertainty judge; do
  if [ -f "$OUT/$name.txt" ]; then
    echo "--- $name"
    grep -v '^{' "$OUT/$name.txt" | tail -n 30
  fi
done
