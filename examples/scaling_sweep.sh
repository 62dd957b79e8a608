#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A scaling sweep: the planner's prediction and a measured decode step for 1, 2 and 4 ranks of the
# same model, then the error of every prediction (scripts/scaling/sweep.py, `v4rt plan validate`).
#   examples/scaling_sweep.sh [model dir] [out dir]
# Defaults: the embedded tiny model (data/models/tiny) on CPU ranks of this machine, with the
# hardware table configs/hardware/cpu-xeon-2core.yaml (fit your own with `plan validate --fit-on`);
# RANKS (default 1,2,4), CONTEXT (prompt tokens, default 64), STEPS (decode steps, default 4),
# V4RT (default build/cpu/launch/v4rt). On a GPU cluster use sweep.py's --mode gpu with
# --model flash|pro (docs/PLANNER.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$(realpath "${1:-$ROOT/data/models/tiny}")
OUT=${2:-$ROOT/build/scaling_example}
V4RT=$(realpath "${V4RT:-$ROOT/build/cpu/launch/v4rt}")
RANKS=${RANKS:-1,2,4}
[ -f "$MODEL/config.json" ] || { echo "no checkpoint in $MODEL (v4rt init-model --preset tiny --mtp --out $MODEL --seed 1)" >&2; exit 2; }
# One layout per rank count: tensor parallel on 2 ranks, tensor x sequence parallel on 4.
python3 "$ROOT/scripts/scaling/sweep.py" --v4rt "$V4RT" --mode cpu --model "$MODEL" --bench-model "$MODEL" \
  --gpu cpu-xeon-2core --gpus-per-node 4 --ranks "$RANKS" --context "${CONTEXT:-64}" --batch 1 \
  --layouts '1,1,1,1;2,1,1,1;2,2,1,1' --measure --steps "${STEPS:-4}" --no-plot --out "$OUT"
echo
# Fit the per-op constants on the one-rank point and predict the others from it: how well the cost
# model carries a measurement on one rank over to more ranks. The tolerance is wide on purpose: a
# shared or busy CPU times noisily (GPU points land within +-25%, docs/PLANNER.md).
"$V4RT" plan validate --points "$OUT/results.csv" --fit-on gpus=1 --tolerance "${TOLERANCE:-200}"
