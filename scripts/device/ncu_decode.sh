#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Hardware counters of the decode step's largest kernels (Nsight Compute, clocks left alone): one
# `bench step` at batch 256, 8K context (Flash 2-layer slice), the first launches of the FP4 expert
# GEMMs, the sparse attention and the indexer scores after the warm-up steps, with the speed-of-
# light and compute-workload sections (memory vs issue bound, which pipe is busiest). Run after a
# build (bench_step); logs under $OUT/ncu_*.txt.
#   BUILD=build-gpu bash scripts/device/ncu_decode.sh [extra bench step args...]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; B=${BUILD:-build-gpu}; mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[[ -n $NCU ]] || { echo "ncu: not found"; exit 0; }
source scripts/device/devdeps.sh
S="--synthetic --backend cuda --preset flash --layers 2 --batch ${NCU_BATCH:-256} --context 8192"
for k in ${NCU_KERNELS:-fp4 sparse_attention indexer}; do
  timeout ${NCU_TIMEOUT:-120} "$NCU" --clock-control none -k "regex:$k" --launch-skip ${NCU_SKIP:-12} \
    --launch-count ${NCU_COUNT:-4} --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section LaunchStats --section Occupancy "$B/tests/cuda/bench_step" bench step $S "$@" \
    > "$OUT/ncu_$k.txt" 2>&1
  echo "== ncu $k rc $?"
  grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|SM Busy" \
    "$OUT/ncu_$k.txt" | head -60
done
