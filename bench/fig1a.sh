#!/usr/bin/env bash
# The paper's Fig. 1a on the lookalike benchmark: the five strategies, seed by seed (a stopped grid resumes:
# finished jobs and stages are skipped). Needs the build: python shard_tools/build.py --datasets lookalike
# --out runs/bench/shards --val-fraction 0.15 (apt-get install extremetuxracer-data first).
#   SEEDS="0 1 2" BUDGET=24 bash bench/fig1a.sh [k=v ...]     (2 CPU cores: ~55 min per seed at 24 epochs)
# THREADS=2 (BLAS threads per rank) is the numeric perturbation that stands in for another machine.
set -u
cd "$(dirname "$0")/.."
RD="loss.lambda_local=0 loss.lambda_global=0 model.projector=none"
BUDGET=${BUDGET:-24}
exec .venv/bin/python launch/compare.py --config configs/lookalike.yaml \
  --bench lookalike=runs/bench/shards/lookalike \
  --model "Joint RD=$RD" --model "One-for-one RD=strategy.mode=one-for-one $RD" --model "RD + CCL=" \
  --model "CCL global only=loss.lambda_local=0" \
  --model "Sequential RD=strategy.mode=sequential $RD" --model "Continual RD=strategy.mode=continual $RD" \
  --seeds ${SEEDS:-0} --budgets "$BUDGET" --out "${OUT:-runs/fig1a}" --jobs "${JOBS:-2}" --processes "${PROCESSES:-1}" --threads "${THREADS:-1}" \
  --vis 0 "train.min_epochs=$((BUDGET / 2))" "$@"
