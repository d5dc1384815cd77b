#!/usr/bin/env bash
# The paper's Fig. 1a: the five strategies, seed by seed (a stopped grid resumes: finished jobs and stages
# are skipped).
#   SEEDS="0 1 2" bash bench/fig1a.sh [k=v ...]                lookalike, 24 epochs (~55 min per seed, 2 CPU cores)
#   BENCH=demo SEEDS="0 1 2" bash bench/fig1a.sh [k=v ...]     demo, 48 epochs, 2 ranks as make demo (~45 min per seed)
#   BENCH=inspect ...                                          inspect, as the demo
# Builds: python shard_tools/build.py --datasets lookalike --out runs/bench/shards --val-fraction 0.15
# (apt-get install extremetuxracer-data first); --datasets inspect likewise; the demo's is make demo's
# (--val-fraction 0.15; SHARDS=DIR names another build).
# lookalike: every row pins its losses (configs/lookalike.yaml's default is the global-only row).
# THREADS=2 (BLAS threads per rank) is the numeric perturbation that stands in for another machine.
set -u
cd "$(dirname "$0")/.."
RD="loss.lambda_local=0 loss.lambda_global=0 model.projector=none"
BENCH=${BENCH:-lookalike}
STRATEGIES=(--model "One-for-one RD=strategy.mode=one-for-one $RD"
  --model "Sequential RD=strategy.mode=sequential $RD" --model "Continual RD=strategy.mode=continual $RD")
if [[ $BENCH == lookalike ]]; then
  BUDGET=${BUDGET:-24}
  ARGS=(--config configs/lookalike.yaml --bench lookalike=runs/bench/shards/lookalike --out "${OUT:-runs/fig1a}"
    --jobs "${JOBS:-2}" --processes "${PROCESSES:-1}" --model "Joint RD=$RD" "${STRATEGIES[@]}"
    --model "RD + CCL=loss.lambda_local=1" --model "CCL global only=loss.lambda_local=0"
    --model "CCL global only, tau 0.2=loss.lambda_local=0 loss.temperature=0.2" "train.min_epochs=$((BUDGET / 2))")
else
  # configs/demo.yaml's protocol, the one of the README's demo / inspect tables and of make demo
  BUDGET=${BUDGET:-48}
  SHARDS=${SHARDS:-$([[ $BENCH == demo ]] && echo runs/demo/shards/demo || echo "runs/bench/shards/$BENCH")}
  ARGS=(--config configs/demo.yaml --bench "$BENCH=$SHARDS" --out "${OUT:-runs/fig1a_$BENCH}"
    --jobs "${JOBS:-1}" --processes "${PROCESSES:-2}" --model "Joint RD=$RD" "${STRATEGIES[@]}" --model "RD + CCL=")
fi
exec .venv/bin/python launch/compare.py "${ARGS[@]}" --seeds ${SEEDS:-0} --budgets "$BUDGET" \
  --threads "${THREADS:-1}" --vis 0 "$@"
