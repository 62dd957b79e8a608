#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine): programmatic dependent launch of every
# kernel (debug.cuda_pdl, kernels/cuda/launch.cuh) and the decode expert GEMV's L2 prefetch
# (debug.cuda_fp4_gemv_l2_prefetch), both on by default. Builds the op tests, test_cuda_graphs,
# test_gpu_golden, bench_step and bench_cuda; runs test_cuda_graphs (captured and replayed steps
# with programmatic edges), golden tiny-a, `bench step` at batch 1, 64 and 256 with both, without
# PDL (scripts/device/pdl_off.yaml) and without the prefetch (gemv_no_prefetch.yaml), the op
# tests, `bench_cuda - fp4`'s decode routings (prefetch 0 / 128 / 256 side by side), batch 1 at 4K
# and 1M (most telling first: a call cut short keeps what ran).
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/pdl_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, step, graphs_stage, golden_stage, tests_stage
check_begin /tmp/pdl_logs 300 test_cuda_kernels test_cuda_graphs test_gpu_golden bench_step bench_cuda
graphs_stage
golden_stage
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192 --iters 20"
step pdl "" "$S"
step nopdl scripts/device/pdl_off.yaml "$S"
step noprefetch scripts/device/gemv_no_prefetch.yaml "${S/--batch 1,64,256/--batch 1,256}"
tests_stage all 420 "-CudaLongPrompt.*"
BENCH_FP4_MODES=1 timeout 120 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1
echo "== bench_cuda fp4 rc $?"; grep -E "prefetch|picks" $L/bench_fp4.txt | head -60; el bench_fp4
step pdl_b1 "" "${S/--batch 1,64,256 --context 8192/--batch 1 --context 4096,1048576}"; el all
