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
source scripts/device/check_lib.sh  # check_begin, el, step, graphs_stage, golden_stage, tests_stage
check_begin /tmp/segments_logs 300 test_cuda_kernels test_cuda_graphs test_gpu_golden bench_step
graphs_stage
golden_stage
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192 --iters 20"
step eager "" "$S"
step segments scripts/device/graphs_segments.yaml "$S"
step replay scripts/device/graphs_replay.yaml "$S"
tests_stage all 420
