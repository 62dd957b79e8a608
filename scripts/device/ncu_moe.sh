#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Where the 8K prefill's routed experts spend their time, kernel by kernel (Nsight Compute, clocks
# left alone, duration and DRAM / SM throughput only): every launch of the MoE kernels (moe_*: routing,
# gather + FP8 quantization, SwiGLU + quantization, combine) and of the W4A8 GEMMs (fp4_*) over
# the whole `bench prefill` (its warm-up and measured prefills alike), summed per kernel name.
# `bench prefill` has the experts' op time (moe_experts) at about 9 ms a layer on the H100 against
# about 7 ms for their three GEMMs in `bench_cuda - fp4`: this says where the rest goes.
#   BUILD=build-gpu OUT=... [NCU_CONFIG=yaml] bash scripts/device/ncu_moe.sh     (bench_step built)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; B=${BUILD:-build-gpu}; mkdir -p "$OUT"
source scripts/device/devdeps.sh
[[ -n $NCU ]] || { echo "ncu: not found"; exit 0; }
f=$OUT/ncu_moe.csv
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
M+=,sm__throughput.avg.pct_of_peak_sustained_elapsed
timeout "${NCU_TIMEOUT:-200}" "$NCU" --clock-control none --csv --page raw --metrics $M -k "regex:moe_|fp4_" \
  "$B/tests/cuda/bench_step" bench prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 \
  ${NCU_CONFIG:+--config "$NCU_CONFIG"} > "$f" 2> "$OUT/ncu_moe.err"
echo "== ncu moe rc $? (kernel: launches, total us, mean DRAM %, mean SM %, share)"
python3 scripts/device/ncu_sum.py "$f" 1 60 "over the bench's prefills"
