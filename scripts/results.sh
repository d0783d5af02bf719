#!/usr/bin/env bash
# The runs behind docs/results.md: every multimodal model on ml100k and tiktok, Adam and Mirror Gradient,
# 3 seeds, MMRec's defaults, then one table from every run's metrics.json.
#
#   bash scripts/results.sh [models] [data sets] [max epochs]     e.g. bash scripts/results.sh vbpr,bm3 tiktok 60
#
# Runs go to logs/results/<data>_<model>/ (a Hydra multirun each; seeds outermost, so a run cut short still
# holds Adam / MG pairs). Two data sets run side by side, one torch
# thread each (faster than two threads per run on a 2-core machine). Epochs: early stopping on validation
# Recall@20 (patience 20) within the max-epochs cap.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-vbpr,bm3,freedom,lattice,mgcn,slmrec}
DATASETS=${2:-ml100k,tiktok}
MAX_EPOCHS=${3:-60}
PY=${PYTHON:-.venv/bin/python}
COMMON=(extras.print_config=false trainer.enable_progress_bar=false "~callbacks.rich_progress_bar" trainer=cpu)

run_data() {
  local data=$1
  for model in ${MODELS//,/ }; do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" train.py -m "model=$model" "data=$data" seed=0,1,2 optimizer=adam,mg \
      "trainer.max_epochs=$MAX_EPOCHS" "${COMMON[@]}" "hydra.sweep.dir=logs/results/${data}_${model}" \
      > "logs/results/${data}_${model}.log" 2>&1 || echo "failed: $model on $data (logs/results/${data}_${model}.log)"
  done
}

mkdir -p logs/results
for data in ${DATASETS//,/ }; do
  run_data "$data" &
done
wait
"$PY" scripts/results_table.py logs/results --metrics val/recall@20,test/recall@20,test/ndcg@20
