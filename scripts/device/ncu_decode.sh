#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Hardware counters of the decode step (Nsight Compute, clocks left alone), Flash 2-layer slice at
# 8K context, `bench step` built (bench_step):
#   1. every kernel of the timed steps (`bench step` marks them: --profile-from-start off) at batch
#      1 and at batch 256: duration, DRAM and SM throughput (% of peak), as CSV
#      ($OUT/ncu_step_b<batch>.csv) and summed per kernel name, per step;
#   2. the FP4 expert GEMMs and the sparse attention at batch 256 (NCU_BATCH) in detail (speed of
#      light, compute workload: which pipe is busiest; launch, occupancy, warp stalls, memory),
#      $OUT/ncu_<kernel>.txt; NCU_KERNELS: other kernel-name regexes, NCU_LAUNCHES: instances each,
#      NCU_EXTRA: more ncu arguments (e.g. "--section SourceCounters": the hottest SASS lines).
#   BUILD=build-gpu [NCU_PARTS="step detail"] bash scripts/device/ncu_decode.sh [extra bench step args...]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; B=${BUILD:-build-gpu}; mkdir -p "$OUT"
source scripts/device/devdeps.sh
[[ -n $NCU ]] || { echo "ncu: not found"; exit 0; }
ITERS=3  # timed steps
STEP="$B/tests/cuda/bench_step bench step --synthetic --backend cuda --preset flash --layers 2 --context 8192 --iters $ITERS"
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed
if [[ " ${NCU_PARTS:-step detail} " == *" step "* ]]; then
for b in 1 256; do
  f=$OUT/ncu_step_b$b.csv
  timeout ${NCU_TIMEOUT:-150} "$NCU" --clock-control none --csv --page raw --metrics $M --profile-from-start off \
    $STEP --batch $b "$@" > "$f" 2> "$OUT/ncu_step_b$b.err"
  echo "== ncu step batch $b rc $? (kernel: launches, us per step, mean DRAM %, mean SM %, share)"
  python3 scripts/device/ncu_sum.py "$f" "$ITERS" 30 "per step ($ITERS timed steps)"
done
fi
[[ " ${NCU_PARTS:-step detail} " == *" detail "* ]] || exit 0
for k in ${NCU_KERNELS:-fp4 sparse_attention}; do
  timeout ${NCU_TIMEOUT:-150} "$NCU" --clock-control none -k "regex:$k" --profile-from-start off \
    --launch-count ${NCU_LAUNCHES:-4} --section SpeedOfLight --section ComputeWorkloadAnalysis --section LaunchStats \
    --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis ${NCU_EXTRA:-} \
    $STEP --batch ${NCU_BATCH:-256} "$@" > "$OUT/ncu_$k.txt" 2>&1
  echo "== ncu $k rc $? (batch ${NCU_BATCH:-256})"
  grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|Executed Ipc|Warp Cycles Per Issued|Mem Busy|Max Bandwidth|L2 Hit|stall|Stall" \
    "$OUT/ncu_$k.txt" | head -${NCU_LINES:-48}
done
