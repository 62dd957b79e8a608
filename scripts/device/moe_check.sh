#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine): what "Pending on the GPU" lists first.
# Golden tiny-a and the 8K prefill with the defaults (the W4A8 expert GEMM's activation tiles by
# TMA), the 8K prefill's MoE and W4A8 kernels one by one (scripts/device/ncu_moe.sh: where the
# routed experts' time beyond their GEMMs goes), `bench step` at batch 1 and 256, test_cuda_graphs,
# then every op test within TESTS_LIMIT seconds (default 200). Logs: $OUT/summary.txt, $OUT/logs.tgz.
#   [TESTS_LIMIT=s] bash scripts/device/moe_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, golden_stage, graphs_stage, prefill_stage, step, tests_stage
check_begin /tmp/moe_logs 300 test_cuda_kernels test_gpu_golden test_cuda_graphs bench_step
golden_stage
prefill_stage 8k 8192 8192 ""
BUILD=$B OUT=$L timeout 240 bash scripts/device/ncu_moe.sh > "$L/ncu_moe.txt" 2>&1
head -40 "$L/ncu_moe.txt"; el ncu_moe
step decode "" "--synthetic --backend cuda --preset flash --layers 2 --batch 1,256 --context 8192 --iters 10"
graphs_stage 120
tests_stage all "${TESTS_LIMIT:-200}"
