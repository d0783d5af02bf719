#!/usr/bin/env bash
# The GPU checks in one go: scripts/gpu_check.sh OUT_DIR
#
# On a machine with a CUDA GPU: the GPU-marked tests (pytest -m gpu: one epoch of LightGCN and BM3 with Adam
# and MG on the GPU, GPU scores against CPU scores, DDP on 2 GPUs when 2 are visible) and a reduced GPU
# benchmark (models suite on tiktok for LightGCN, BM3, FREEDOM; scaling suite for LightGCN at 1/8 and 1x of
# Elec's size). Every step has a hard time limit, so the whole check ends within 8 minutes. It writes into
# OUT_DIR (4 files): gpu_check.log (nvidia-smi, the tests' and the benchmarks' output), bench_gpu.md (the
# tables), bench_gpu.json (the raw figures), scaling_gpu.png (the scaling plot).
# Without a CUDA GPU it says so, skips everything and exits 0. Exit status: 0 when every step passed.
# Python: $PYTHON, else .venv/bin/python, else python3. Real data (tiktok, for the models suite):
# $MGREC_SHARED_DATA, else ../shared/data; without it that step says so and measures nothing.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA_DIR=${MGREC_SHARED_DATA:-$(dirname "$PWD")/shared/data}
LOG="$OUT/gpu_check.log"
: >"$LOG"

say() { echo "gpu_check: $*" | tee -a "$LOG"; }

if ! "$PY" -c "import torch" >>"$LOG" 2>&1; then
    say "cannot import torch with $PY (set PYTHON): nothing checked"
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >>"$LOG" 2>&1; then
    say "no CUDA GPU visible (torch.cuda.is_available() is False): skipping the GPU tests and the GPU benchmark"
    exit 0
fi

export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 WANDB_MODE=offline
status=0
step() {  # step LIMIT_SECONDS NAME COMMAND...: run COMMAND under a hard limit, log it, record a failure
    local limit=$1 name=$2
    shift 2
    say "$name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && say "$name: stopped at its ${limit} s limit"
    say "$name: exit status $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

{ nvidia-smi || true; } >>"$LOG" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count(), torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"

step 110 "GPU tests" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step 160 "models suite on tiktok" "$PY" scripts/bench.py --device cuda --suite models --data tiktok \
    --models lightgcn,bm3,freedom --repeats 2 --point-timeout 45 --data-dir "$DATA_DIR" \
    --out "$OUT/bench_gpu.md" --json "$OUT/bench_gpu.json"
step 170 "scaling suite, LightGCN at 1/8 and 1x" "$PY" scripts/bench.py --device cuda --suite scaling \
    --scaling-models lightgcn --fractions 0.125,1 --repeats 2 --point-timeout 80 \
    --out "$OUT/bench_gpu.md" --plot "$OUT/scaling_gpu.png" --json "$OUT/bench_gpu.json"

say "done in $SECONDS s, exit status $status; figures in $OUT"
exit $status
