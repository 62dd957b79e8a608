#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 6 minutes from a fresh machine; every stage archived as it ends): decode
# steps replayed by a cached CUDA graph executable (debug.cuda_graph_replay, kernels/cuda/
# step_graph.h and launch_log.h) and the decode expert GEMV's k split by k (fp4_gemv_shape).
# Builds the op tests, test_cuda_graphs, test_gpu_golden, bench_step; runs test_cuda_graphs (every
# case captured and replayed); `bench step` at batch 1, 64 and 256 launched op by op, as replayed
# graphs and as captured graphs; the GEMV and MoE op tests, golden tiny-a; batch 1 at 4K and 1M
# replayed; the rest of the W4A8 / mHC / sampler / copy op tests (most telling first: a call cut
# short keeps what ran).
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/replay_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, step, graphs_stage, golden_stage
check_begin /tmp/replay_logs 300 test_cuda_kernels test_cuda_graphs test_gpu_golden bench_step
T=$B/tests/cuda/test_cuda_kernels
graphs_stage
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192"
step eager "" "$S"
step replay scripts/device/graphs_replay.yaml "$S"
step capture scripts/device/graphs_on.yaml "$S"
timeout 120 $T --gtest_brief=1 --gtest_filter="CudaW4a8Gemv.*:CudaMoe.*" > $L/tests.txt 2>&1
echo "== GEMV + MoE tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests.txt | head -30; el tests
golden_stage
step replay_b1 scripts/device/graphs_replay.yaml "${S/--batch 1,64,256 --context 8192/--batch 1 --context 4096,1048576}"
timeout 150 $T --gtest_brief=1 --gtest_filter="${REST_FILTER:-CudaW4a8.*:CudaOps.Hc*:CudaSample*:CudaOps.Copy*}" > $L/tests_rest.txt 2>&1
echo "== W4A8, mHC, sampler, copy tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_rest.txt | head -20; el all
