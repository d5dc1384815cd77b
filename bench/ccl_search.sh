#!/bin/bash
# The search behind README "RD + CCL vs Joint RD: what we measured": every grid, as run.
#
#   bash bench/ccl_search.sh search|residual|final|long|budget48|lookalike [OUT]     (DRY=--dry-run lists the jobs)
#
# search:   18 models (Joint RD, RD + CCL and one change each), seed 0, both benchmarks, 16 epochs
# residual: the residual (ReZero) projector, seeds 0 1
# final:    Joint RD, RD + CCL (the paper's model) and RD + CCL with the residual projector, seeds 0 1 2
# long:     Joint RD, RD + CCL and the official code's choices at 48 epochs, seed 0
# budget48: Joint RD and RD + CCL with the residual projector (configs/demo.yaml's model) at 48 epochs,
#           seeds 0 1 2 (the demo's budget since; ~1.5 h on 2 idle CPU cores)
# lookalike: on the lookalike benchmark (configs/lookalike.yaml: the demo's model, robust early stopping), seed 0,
#           24 epochs: Joint RD, RD + CCL and 12 variants (one change each, then the global-only family);
#           2 CPU cores, 2 single-rank jobs at a time (~1.5 h). Needs the lookalike build (README).
# The first two and "long" ran on a lent GPU (JOBS=10 PROCESSES=1), "final" and "budget48" on 2 CPU
#  cores (the defaults).
# Needs the shards: python shard_tools/build.py --datasets demo --out runs/demo/shards --val-fraction 0.15
#                   python shard_tools/build.py --datasets inspect --out runs/bench/shards --val-fraction 0.15
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GRID=${1:?search|residual|final|long|budget48|lookalike}
OUT=${2:-runs/ccl_$GRID}
if [[ $GRID == lookalike ]]; then
  # configs/lookalike.yaml now defaults to the global-only losses: every row pins its own (L: the paper's).
  G="loss.lambda_local=0"; L="loss.lambda_local=1"
  exec $PY launch/compare.py ${DRY:-} --config configs/lookalike.yaml \
    --bench lookalike=${LOOKALIKE_SHARDS:-runs/bench/shards/lookalike} --seeds 0 --budgets 24 --out "$OUT" \
    --jobs ${JOBS:-2} --processes ${PROCESSES:-1} --vis 0 \
    --model "Joint RD=loss.lambda_local=0 loss.lambda_global=0 model.projector=none" --model "RD + CCL=$L" \
    --model "CCL global only=$G" --model "CCL lambda 0.1=loss.lambda_local=0.1 loss.lambda_global=0.1" \
    --model "CCL local only=$L loss.lambda_global=0" --model "CCL paper projector=$L model.projector_residual=false" \
    --model "CCL negatives all=$L loss.local_negatives=all" --model "CCL match teacher=$L loss.local_match=teacher" \
    --model "CCL tau 0.5=$L loss.temperature=0.5" --model "CCL warm-up 6 ep=$L loss.contrastive_warmup=444" \
    --model "CCL global only, no projector=$G model.projector=none" \
    --model "CCL global only, lambda 2=$G loss.lambda_global=2" \
    --model "CCL global only, tau 0.2=$G loss.temperature=0.2"
fi
VT="loss.local_positives=view loss.local_match=teacher loss.local_window=full"
JOINT="Joint RD=loss.lambda_local=0 loss.lambda_global=0 model.projector=none"
OFFICIAL="$VT model.noise_prob=0.31 loss.temperature=0.05 data.augment.preset=official"
case "$GRID" in
  search) SEEDS="0"; BUDGETS="16"; MODELS=(
    --model "$JOINT" --model "RD + CCL=" --model "RD + proj=loss.lambda_local=0 loss.lambda_global=0"
    --model "local only=loss.lambda_global=0" --model "global only=loss.lambda_local=0"
    --model "local view-teacher=$VT" --model "noise=model.noise_prob=0.31" --model "official=$OFFICIAL"
    --model "aug geometric=data.augment.preset=geometric" --model "tau 0.05=loss.temperature=0.05"
    --model "lambda 0.1=loss.lambda_local=0.1 loss.lambda_global=0.1" --model "neg all=loss.local_negatives=all"
    --model "view-teacher geometric=$VT data.augment.preset=geometric"
    --model "Joint RD + noise=loss.lambda_local=0 loss.lambda_global=0 model.projector=none model.noise_prob=0.31"
    --model "proj 2-mlp=model.projector=2-mlp" --model "warmup=loss.contrastive_warmup=240"
    --model "aug paper=data.augment.preset=paper" --model "sum=loss.reduction=sum");;
  residual) SEEDS="0 1"; BUDGETS="16"; MODELS=(
    --model "$JOINT" --model "res CCL=model.projector_residual=true"
    --model "res view-teacher=model.projector_residual=true $VT");;
  final) SEEDS="0 1 2"; BUDGETS="16"; MODELS=(
    --model "$JOINT" --model "RD + CCL (paper)=" --model "RD + CCL (residual)=model.projector_residual=true");;
  long) SEEDS="0"; BUDGETS="48"; MODELS=(--model "$JOINT" --model "RD + CCL=" --model "official=$OFFICIAL");;
  budget48) SEEDS="0 1 2"; BUDGETS="48"; MODELS=(
    --model "$JOINT" --model "RD + CCL (residual)=model.projector_residual=true");;
  *) echo "unknown grid $GRID" >&2; exit 2;;
esac
# The grids ran before configs/demo.yaml took the residual projector: every model that does not choose
# its projector gets the paper's, as it had then.
for i in "${!MODELS[@]}"; do
  m=${MODELS[$i]}
  if [[ $m == *=* && $m != *projector_residual=* ]]; then MODELS[$i]="${m%%=*}=model.projector_residual=false ${m#*=}"; fi
done
$PY launch/compare.py ${DRY:-} --config configs/demo.yaml \
  --bench demo=${DEMO_SHARDS:-runs/demo/shards/demo} --bench inspect=${INSPECT_SHARDS:-runs/bench/shards/inspect} \
  --seeds $SEEDS --budgets $BUDGETS --out "$OUT" --jobs ${JOBS:-1} --processes ${PROCESSES:-2} "${MODELS[@]}" \
  tracking.vis_every=0 tracking.wandb.mode=disabled train.progress=false
