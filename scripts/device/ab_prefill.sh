#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call: `bench prefill` of the working tree against commit REF on the same machine (a
# figure that moved between two calls may be the machine). Builds bench_step here (build-gpu) and
# in REF's tree (git archive, so .git must be carried) under /tmp/ab_ref, then runs the prefill
# (Flash, 2 layers, chunk 8192, CONTEXT tokens, default 1M) on each, alternating, ROUNDS times
# (default 1); CONFIG: a runtime YAML for both. Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   REF=683eed0 [CONTEXT=8192] [ROUNDS=2] bash scripts/device/ab_prefill.sh    (carry .devdeps and .git)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el
check_begin /tmp/ab_logs 300 bench_step
R=/tmp/ab_ref
rm -rf "$R" && mkdir -p "$R"
if ! git archive "${REF:?set REF to the commit to compare}" | tar x -C "$R"; then
  echo "ab: no git history (carry .git)"; exit 1
fi
cp -r .devdeps "$R/"
(cd "$R" && OUT=$R/out BUILD=build-gpu TARGETS=bench_step JOBS=${JOBS:-16} \
  timeout 300 bash scripts/device/run.sh none) > "$L/build_ref.txt" 2>&1
tail -2 "$L/build_ref.txt"; el build_ref
for i in $(seq "${ROUNDS:-1}"); do
  for side in head ref; do
    bin=$B/tests/cuda/bench_step
    [[ $side == ref ]] && bin=$R/build-gpu/tests/cuda/bench_step
    timeout 150 "$bin" bench prefill --backend cuda --preset flash --layers 2 --chunk 8192 \
      --context "${CONTEXT:-1048576}" ${CONFIG:+--config "$CONFIG"} > "$L/p_${side}_$i.txt" 2>&1
    echo "== $side, round $i: rc $?"
    grep -E "prefill:|sparse_attention |indexer_scores|moe_experts|topk|total" "$L/p_${side}_$i.txt"
    el "p_${side}_$i"
  done
done
