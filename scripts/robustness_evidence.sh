#!/usr/bin/env bash
# The evidence behind docs/robustness.md: Adam against Mirror Gradient for VBPR, BM3 and FREEDOM on tiktok
# and ml100k, 5 seeds each, then the comparison table, robustness curves and sharpness figures.
#
#   bash scripts/robustness_evidence.sh [stage] [models] [data sets] [max epochs] [out]
#     stage: train | report | robustness | sharpness | landscape | all (default), or inherent (not in all)
#     e.g.   bash scripts/robustness_evidence.sh train vbpr tiktok 60 logs/evidence
#
# Layout: <out>/runs/<model>_<data>/<optimizer>/seed<s>/ (one Hydra multirun per model and data set), so
# every stage after `train` points at folders by optimizer; the report groups runs by their saved config.
# Each stage skips work whose output exists, so an interrupted run of this script resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-all}
MODELS=${2:-vbpr,bm3,freedom}
DATASETS=${3:-tiktok,ml100k}
MAX_EPOCHS=${4:-60}
OUT=${5:-logs/evidence}
SEEDS=${SEEDS:-0,1,2,3,4}
GAUSSIAN_SNR_DB=${GAUSSIAN_SNR_DB:-"30 20 10 5 0 -5"}
REPLACE_SHARES=${REPLACE_SHARES:-"0.05 0.1 0.2 0.4 0.8"}
SHARPNESS_ARGS=${SHARPNESS_ARGS:-}  # eval.py overrides, e.g. "sharpness.draws=5 sharpness.batches=4"
NOISE_KIND=${NOISE_KIND:-gaussian}  # the inherent stage: training-time feature noise
NOISE_STRENGTH=${NOISE_STRENGTH:-0}
LANDSCAPE_ARGS=${LANDSCAPE_ARGS:-}  # python -m mgrec.flatness compare options, e.g. "--points-2d 11"
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
QUIET=(extras.print_config=false trainer.enable_progress_bar=false "~callbacks.rich_progress_bar")
N_SEEDS=$(($(tr -cd , <<<"$SEEDS" | wc -c) + 1))

finished() { # folder -> number of metrics.json below it
  find "$1" -name metrics.json 2>/dev/null | wc -l
}

sweep() { # dir log overrides...: Adam and MG x every seed into dir/<optimizer>/seed<s>, unless already there
  local dir=$1 log=$2
  shift 2
  if [[ $(finished "$dir") -ge $((2 * N_SEEDS)) ]]; then return; fi
  rm -rf "$dir"
  echo "$* -> $dir"
  "$PY" train.py -m "$@" optimizer=adam,mg "seed=$SEEDS" trainer=cpu "trainer.max_epochs=$MAX_EPOCHS" \
    "${QUIET[@]}" "hydra.sweep.dir=$dir" 'hydra.sweep.subdir=${hydra:runtime.choices.optimizer}/seed${seed}' \
    > "$log" 2>&1
}

train() {
  sweep "$OUT/runs/$1_$2" "$OUT/logs/train_$1_$2.log" "experiment=$1_$2"
}

inherent() { # train and test on features that were noisy all along (data.noise)
  local noise=${NOISE_KIND}_${NOISE_STRENGTH}
  sweep "$OUT/noisy_runs/$noise/$1_$2" "$OUT/logs/inherent_${noise}_$1_$2.log" "experiment=$1_$2" \
    "data.noise.kind=$NOISE_KIND" "data.noise.strength=$NOISE_STRENGTH"
}

robustness() {
  local model=$1 data=$2 kind=$3 strengths=$4 dir=$OUT/robustness/$1_$2_$3
  if [[ -f $dir/robustness.csv ]]; then return; fi
  echo "robustness $kind $model $data -> $dir"
  # shellcheck disable=SC2086  # the strengths are separate arguments
  "$PY" -m mgrec.robustness --baseline "$OUT/runs/${model}_${data}/adam" --mg "$OUT/runs/${model}_${data}/mg" \
    --labels Adam MG --kind "$kind" --strengths $strengths --metrics test/recall@20,test/ndcg@20 \
    --seed 0 --accelerator cpu --out "$dir" > "$OUT/logs/robustness_${model}_${data}_${kind}.log" 2>&1
}

sharpness() {
  local model=$1 data=$2 dir=$OUT/sharpness/$1_$2
  if [[ $(finished "$dir") -ge $((2 * N_SEEDS)) ]]; then return; fi
  rm -rf "$dir"
  local ckpts
  ckpts=$(find "$OUT/runs/${model}_${data}" -path '*checkpoints/best.ckpt' | sort | paste -sd,)
  echo "sharpness $model $data -> $dir"
  # every checkpoint probed on the same batches and draws (the eval seed), whatever its training seed
  # shellcheck disable=SC2086
  "$PY" eval.py -m task=sharpness "ckpt_path=$ckpts" trainer=cpu extras.print_config=false $SHARPNESS_ARGS \
    "hydra.sweep.dir=$dir" > "$OUT/logs/sharpness_${model}_${data}.log" 2>&1
}

landscape() {
  local model=$1 data=$2 dir=$OUT/landscape/$1_$2
  if [[ -f $dir/flatness_table.md ]]; then return; fi
  echo "landscape $model $data (seed 0) -> $dir"
  # shellcheck disable=SC2086  # the options are separate arguments
  "$PY" -m mgrec.flatness compare "$OUT/runs/${model}_${data}/adam/seed0" "$OUT/runs/${model}_${data}/mg/seed0" \
    --labels Adam MG --seed 0 $LANDSCAPE_ARGS --out "$dir" > "$OUT/logs/landscape_${model}_${data}.log" 2>&1
}

each() { # function: run it for every model and data set
  for data in ${DATASETS//,/ }; do
    for model in ${MODELS//,/ }; do
      "$@" "$model" "$data"
    done
  done
}

rob_both() {
  robustness "$1" "$2" gaussian "$GAUSSIAN_SNR_DB"
  robustness "$1" "$2" replace "$REPLACE_SHARES"
}

case $STAGE in
  train | report | robustness | sharpness | landscape | all | inherent) mkdir -p "$OUT/logs" ;;
  *) echo "unknown stage: $STAGE (train, report, robustness, sharpness, landscape, all or inherent)" >&2; exit 2 ;;
esac
case $STAGE in
  train | all) each train ;;&
  report | all)
    "$PY" -m mgrec.report "$OUT/runs" --out "$OUT/report" --metrics test/recall@20,test/ndcg@20,val/recall@20 \
      > "$OUT/logs/report.log" 2>&1
    echo "report -> $OUT/report/report.md"
    ;;&
  robustness | all) each rob_both ;;&
  sharpness | all)
    each sharpness
    "$PY" -m mgrec.report "$OUT/sharpness" --task eval --out "$OUT/sharpness" \
      --metrics sharpness/random@0.01,sharpness/random@0.05,sharpness/worst@0.01,sharpness/worst@0.05,hessian/top_eigenvalue,train_loss \
      > "$OUT/logs/sharpness_report.log" 2>&1
    echo "sharpness report -> $OUT/sharpness/report.md"
    ;;&
  landscape | all) each landscape ;;
  inherent)
    each inherent
    "$PY" -m mgrec.report "$OUT/noisy_runs" --out "$OUT/noisy_report" \
      --metrics test/recall@20,test/ndcg@20,val/recall@20 > "$OUT/logs/noisy_report.log" 2>&1
    echo "report -> $OUT/noisy_report/report.md"
    ;;
esac
