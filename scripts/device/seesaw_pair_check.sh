#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 5 minutes from a fresh machine) for the prefill indexer's two accumulator
# sets (kernels/cuda/indexer_fp8.cu, debug.cuda_indexer_seesaw) and the decode gate/up pair GEMV
# (kernels/cuda/fp4_gemv.cu, fp4_grouped_gemv_pair), most important first: builds the op tests and
# bench_step; runs the indexer and GEMV op tests (both indexer pipelines bit for bit, the pair bit
# for bit the single GEMVs); `bench step` at batch 1, 64 and 256 (the pair in the step); `bench
# prefill` at 8K and 1M, each as by default and on the single-set indexer (idx_one_set.yaml);
# [FP4=1: `bench_cuda - fp4`, the pair against two launches].
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/seesaw_pair_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh
check_begin /tmp/seesaw_logs 240 test_cuda_kernels bench_step
T=$B/tests/cuda/test_cuda_kernels
timeout 90 $T --gtest_brief=1 --gtest_filter="CudaOps.Indexer*:CudaIndexer*:CudaLongPrompt.Indexer*:CudaW4a8Gemv*" \
  > $L/tests.txt 2>&1
echo "== op tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests.txt | grep -vE " 0 of " | head -30; el tests
P="$B/tests/cuda/bench_step bench"
timeout 60 $P step --synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192 > $L/step.txt 2>&1
echo "== step rc $?"; grep -E "^=== |decode step|moe_experts|total .op|EXTRAPOLATION" $L/step.txt; el step
prefill() {  # tag context [config]
  local cfg=(); [[ -n ${3:-} ]] && cfg=(--config "scripts/device/$3")
  timeout "$4" $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context "$2" "${cfg[@]}" > $L/p_$1.txt 2>&1
  echo "== prefill $1 rc $?"; grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|topk|total|PROJECTION" $L/p_$1.txt
  el "prefill $1"
}
prefill 8k 8192 "" 40
prefill 8k_one 8192 idx_one_set.yaml 40
prefill 1m 1048576 "" 75
prefill 1m_one 1048576 idx_one_set.yaml 75
if [[ ${FP4:-0} == 1 ]]; then
  cmake --build $B --target bench_cuda -j "${JOBS:-16}" > $L/bench_cuda_build.txt 2>&1
  timeout 60 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "== bench_cuda fp4 rc $?"
  grep -E "gemv.*decode T=|gate \+ up" $L/bench_fp4.txt | cut -c1-140; el fp4
fi
