#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 7 minutes from a fresh machine) for the FP8 indexer's head sums on the
# tensor cores (kernels/cuda/indexer_fp8_common.cuh, head_sums_mma) and the prefill chunk size:
# builds the op tests, test_cuda_graphs, test_gpu_golden and bench_step; runs the indexer op tests
# (pre-decoded against in-block keys bit for bit, both head sums against the CPU op),
# test_cuda_graphs (the launch log's replay) and golden tiny-a; `bench prefill` at 8K and 1M with
# the tensor-core head sums (the default) and with fp32 adds (idx_add_sum.yaml); `bench step` at
# batch 1 and 256 both ways; `bench prefill` of a 128K prompt in chunks of 4K, 8K, 16K and 32K.
# GRAPHS=0 / CHUNKS=0 skip the graph tests / the chunk sizes; PROFILE=1 ends with the stall profile
# of the 101st indexer launch of a 1M prefill (ncu_prefill.sh).
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [GRAPHS=0] [CHUNKS=0] [PROFILE=1] bash scripts/device/indexer_mma_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, step, graphs_stage, golden_stage, prefill_stage
check_begin /tmp/idx_logs 300 test_cuda_kernels test_cuda_graphs test_gpu_golden bench_step
timeout 120 $B/tests/cuda/test_cuda_kernels --gtest_brief=1 --gtest_filter='CudaOps.IndexerScores*:CudaIndexer*' \
  > $L/tests_idx.txt 2>&1
echo "== indexer op tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_idx.txt | grep -vE " 0 of " | head -40
el tests_idx
[[ ${GRAPHS:-1} == 1 ]] && graphs_stage
golden_stage
prefill_stage 8k 8192 8192 ""
prefill_stage 8k_add 8192 8192 scripts/device/idx_add_sum.yaml
prefill_stage 1m 1048576 8192 ""
prefill_stage 1m_add 1048576 8192 scripts/device/idx_add_sum.yaml
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,256 --context 8192 --iters 10"
STEP_LINES="$STEP_LINES|indexer_scores"
step mma "" "$S"
step add scripts/device/idx_add_sum.yaml "$S"
if [[ ${CHUNKS:-1} == 1 ]]; then
  for c in 4096 8192 16384 32768; do prefill_stage "128k_c$c" 131072 $c ""; done
fi
if [[ ${PROFILE:-0} == 1 ]]; then
  BUILD=$B OUT=$L NCU_KERNEL=indexer_scores_fp8_kernel NCU_SKIP=100 NCU_CONTEXT=1048576 NCU_TAG=indexer \
    NCU_TIMEOUT=200 timeout 260 bash scripts/device/ncu_prefill.sh > $L/ncu_indexer.txt 2>&1
  echo "== ncu indexer rc $?"; head -24 $L/ncu_indexer.txt; el ncu
fi
