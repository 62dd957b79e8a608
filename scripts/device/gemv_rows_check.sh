#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 7 minutes from a fresh machine; every stage archived as it ends, so a call
# cut short returns what ran): the decode expert GEMV's launch shapes (kernels/cuda/fp4_gemv.cu:
# 8 or 16 rows a pass, k split 4, 2 or 1). Builds the op tests, bench_step and bench_cuda; runs the
# GEMV op tests; `bench step` at batch 1, 64 and 256 by default (8-row passes) and at 64 and 256
# with passes by the mean rows (scripts/device/gemv_rows16.yaml: 16 above a mean of 4);
# `bench_cuda - fp4` (every shape at decode sizes, L2-cold, beside the tile kernel); `bench step` at
# 64 and 256 in 16-row passes with k splits of 2 and 1 (gemv_ksplit2.yaml, gemv_ksplit1.yaml); the
# MoE op tests; then builds and runs test_gpu_golden and test_cuda_graphs and `bench step` as
# recorded graphs, also at batch 1 with 4K and 1M context; an 8K `bench prefill`; the remaining
# W4A8 op tests.
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/gemv_rows_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el: logs, summary, the build
QUICK=${QUICK:-0}  # QUICK=1: the GEMV tests and the decode part of `bench_cuda - fp4` alone
check_begin /tmp/gemv_logs 300 test_cuda_kernels bench_cuda $([[ $QUICK == 1 ]] || echo bench_step)
T=$B/tests/cuda/test_cuda_kernels
timeout 90 $T --gtest_brief=1 --gtest_filter="${TEST_FILTER:-CudaW4a8Gemv.*}" > $L/tests.txt 2>&1
echo "== GEMV tests rc $?"; grep -E "FAILED|PASSED|Failure|differ|Expected|Which is" $L/tests.txt | head -40; el tests
if [[ $QUICK == 1 ]]; then
  BENCH_FP4_MODES=1 timeout 150 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "== bench_cuda fp4 rc $?"
  grep -E "decode T=" $L/bench_fp4.txt | grep -vE "cuda cores" | head -200; el fp4
  exit 0
fi
P="$B/tests/cuda/bench_step bench"
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192"
step() {  # step NAME CONFIG BATCHES
  timeout 75 $P step ${S/1,64,256/$3} ${2:+--config $2} > $L/step_$1.txt 2>&1
  echo "== bench step, $1 ${2:-(defaults)}"
  grep -E "^=== |decode step|moe_experts|total .op|tokens/s" $L/step_$1.txt; el step_$1
}
step default "" 1,64,256
step rows16 scripts/device/gemv_rows16.yaml 64,256
timeout 200 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "== bench_cuda fp4 rc $?"
grep -E "decode T=" $L/bench_fp4.txt | grep -vE "cuda cores" | head -200; el fp4
step ksplit2 scripts/device/gemv_ksplit2.yaml 64,256
step ksplit1 scripts/device/gemv_ksplit1.yaml 64,256
timeout 90 $T --gtest_brief=1 --gtest_filter="CudaMoe.*" > $L/tests_moe.txt 2>&1
echo "== MoE tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_moe.txt | head -20; el tests_moe
BUILD=$B TARGETS="test_gpu_golden test_cuda_graphs" JOBS=${JOBS:-16} timeout 200 bash scripts/device/run.sh none > $L/build2.txt 2>&1
tail -2 $L/build2.txt; el build2
timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt
timeout 60 $B/tests/cuda/test_cuda_graphs > $L/graphs.txt 2>&1; echo "graphs rc $?"; grep -E "OK \]|FAIL" $L/graphs.txt; el golden
timeout 90 $P step $S --config scripts/device/graphs_on.yaml > $L/step_graphs.txt 2>&1
echo "== recorded graphs"; grep -E "^=== |decode step|graphs:|GPU time" $L/step_graphs.txt; el graphs
# Batch 1 at 4K and 1M context as recorded graphs: the #26 batch-1 targets' measure (the step graph's
# GPU time less embedding/head/hc_head, per layer).
timeout 90 $P step ${S/--batch 1,64,256 --context 8192/--batch 1 --context 4096,1048576} \
  --config scripts/device/graphs_on.yaml > $L/step_b1_long.txt 2>&1
echo "== batch 1 at 4K and 1M, graphs"; grep -E "^=== |decode step|GPU time" $L/step_b1_long.txt; el step_b1_long
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/p8.txt 2>&1
grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|total|PROJECTION" $L/p8.txt; el prefill
timeout 150 $T --gtest_brief=1 --gtest_filter="${REST_FILTER:-CudaW4a8.*:CudaOps.Hc*:CudaSample*}" > $L/tests_rest.txt 2>&1
echo "== W4A8, mHC, sampler tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_rest.txt | head -20; el all
