#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine): decode steps replayed a layer at a time
# (debug.cuda_graph_segments) against op-by-op launches and whole-step replay, and the op tests to
# the end under programmatic dependent launch (the sixteenth run's bound cut them short). Builds the
# op tests, test_cuda_graphs, test_gpu_golden and bench_step; runs test_cuda_graphs (every case
# captured, replayed and replayed in segments), golden tiny-a, `bench step` at batch 1, 64 and 256
# op by op / segments / whole replay, then every op test (most telling first).
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/segments_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, step: logs, summary, the build, bench step stages
check_begin /tmp/segments_logs 300 test_cuda_kernels test_cuda_graphs test_gpu_golden bench_step
timeout 150 $B/tests/cuda/test_cuda_graphs > $L/graphs.txt 2>&1; echo "graphs rc $?"
grep -E "OK \]|FAILED|Failure|\[graphs\]|bypassed|refused" $L/graphs.txt | head -60; el graphs
timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt; el golden
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192 --iters 20"
step eager "" "$S"
step segments scripts/device/graphs_segments.yaml "$S"
step replay scripts/device/graphs_replay.yaml "$S"
timeout 420 $B/tests/cuda/test_cuda_kernels --gtest_brief=1 > $L/tests.txt 2>&1
echo "== op tests rc $?"; grep -E "FAILED|PASSED|Failure|tests ran" $L/tests.txt | head -30; el all
