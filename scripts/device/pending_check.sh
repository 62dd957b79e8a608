#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine): the checks and profiles the last run left
# open (docs/PERFORMANCE.md, "Pending on the GPU"), most important first, so that a call cut short
# still returns the first results: builds the op tests, bench_step and bench_cuda; runs the mHC,
# indexer, W4A8, MoE and sampler op tests (TEST_FILTER), then the attention ones (ATTN_FILTER);
# [FP4=1: `bench_cuda - fp4`, the expert GEMMs at decode and prefill shapes, every kernel]; an 8K
# `bench prefill`, then with the attention on the mma.sync kernel (scripts/device/attention_mma.yaml);
# the per-instruction stall profile of the default (warp-specialized) sparse attention [NCU_ATTN=0: not]
# [NCU_EXPERTS=1: and of its expert GEMM] (scripts/device/ncu_prefill.sh); `bench step` at batch 1,
# 64 and 256 as configured by default, then as recorded graphs (their GPU time: the step without
# host launch gaps); test_gpu_golden and test_cuda_graphs [NCU_DECODE=1: every kernel of the
# batch-1 and batch-256 steps, scripts/device/ncu_decode.sh]; [LONG=0: not] a 1M-token `bench
# prefill`, then with the mma.sync attention; the prefill-shape W4A8 test.
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [DECODE=0] bash scripts/device/pending_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el: logs, summary, the build
check_begin /tmp/pending_logs 360 test_cuda_kernels bench_step bench_cuda test_gpu_golden test_cuda_graphs
T=$B/tests/cuda/test_cuda_kernels
timeout 150 $T --gtest_brief=1 --gtest_filter="${TEST_FILTER:-CudaOps.Hc*:CudaOps.Indexer*:CudaIndexer*:CudaW4a8*:CudaMoe*:CudaSample*:-CudaW4a8Wgmma.PrefillShapes}" > $L/tests.txt 2>&1
echo "== test_cuda_kernels rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests.txt | grep -vE " 0 of | 0 \(codes\)" | head -40; el tests
# The attention tests apart, under a bound of their own (a kernel that hangs costs 60 s, not the rest).
timeout 60 $T --gtest_brief=1 --gtest_filter="${ATTN_FILTER:-CudaAttentionTc*:CudaOps.SparseAttention*}" > $L/tests_attn.txt 2>&1
echo "== attention tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_attn.txt | grep -vE " 0 of " | grep -v "attention tc" | head -30
el tests_attn
if [[ ${FP4:-0} == 1 ]]; then
  timeout 150 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "bench_cuda fp4 rc $?"
  grep -E "prefill T=|wgmma ws" $L/bench_fp4.txt | head -30; el fp4
fi
P="$B/tests/cuda/bench_step bench"
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/p8.txt 2>&1
grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|rms_norm|qdq|hc_pre|total|PROJECTION" $L/p8.txt; el prefill
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 \
  --config scripts/device/attention_mma.yaml > $L/p8_mma.txt 2>&1
echo "== the mma.sync prefill attention (scripts/device/attention_mma.yaml) rc $?"
grep -E "prefill:|sparse_attention |total" $L/p8_mma.txt; el prefill_mma
# Where the prefill sparse attention (and the expert GEMM) stall, per SASS instruction.
if [[ ${NCU_EXPERTS:-0} == 1 ]]; then
  BUILD=$B OUT=$L timeout 150 bash scripts/device/ncu_prefill.sh > $L/ncu_experts.txt 2>&1
  echo "== ncu prefill experts rc $?"; head -24 $L/ncu_experts.txt; head -30 $L/ncu_experts_top.txt
fi
if [[ ${NCU_ATTN:-1} == 1 ]]; then  # NCU_ATTN=0: no attention profile
BUILD=$B OUT=$L NCU_KERNEL=${NCU_ATTN_KERNEL:-sparse_attention_ws} NCU_CONFIG= NCU_SKIP=0 NCU_TAG=attention \
  timeout 150 bash scripts/device/ncu_prefill.sh > $L/ncu_attention.txt 2>&1
echo "== ncu prefill attention rc $?"; head -24 $L/ncu_attention.txt; head -30 $L/ncu_attention_top.txt; el ncu
fi
if [[ ${DECODE:-1} == 1 ]]; then  # DECODE=0: the prefill stages alone
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192"
timeout 90 $P step $S > $L/step_default.txt 2>&1
grep -E "^=== |decode step|sparse_attention|indexer_scores|moe_experts|129280|grouped_linear|linear fp8|total .op" $L/step_default.txt; el step
timeout 90 $P step $S --config scripts/device/graphs_on.yaml > $L/step_graphs.txt 2>&1; grep -E "^=== |decode step|graphs:|GPU time" $L/step_graphs.txt; el graphs
timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt
timeout 60 $B/tests/cuda/test_cuda_graphs > $L/graphs.txt 2>&1; echo "graphs rc $?"; grep -E "OK \]|FAIL" $L/graphs.txt; el golden
if [[ ${NCU_DECODE:-0} == 1 ]]; then  # every kernel of the batch-1 and batch-256 steps
  NCU_PARTS=step BUILD=$B OUT=$L NCU_TIMEOUT=120 timeout 260 bash scripts/device/ncu_decode.sh > $L/ncu_step.txt 2>&1
  echo "== ncu step rc $?"; grep -A14 "batch 256" $L/ncu_step.txt; el ncu_step
fi
fi
if [[ ${LONG:-1} == 1 ]]; then  # LONG=0: no 1M prefill
timeout ${LONG_TIMEOUT:-100} $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 1048576 > $L/p1m.txt 2>&1
echo "== 1M prefill rc $?"; grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|topk|total|PROJECTION" $L/p1m.txt; el all
timeout ${LONG_TIMEOUT:-100} $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 1048576 \
  --config scripts/device/attention_mma.yaml > $L/p1m_mma.txt 2>&1
echo "== 1M prefill, mma.sync attention rc $?"; grep -E "prefill:|sparse_attention |total|PROJECTION" $L/p1m_mma.txt; el all
fi
timeout 120 $T --gtest_brief=1 --gtest_filter=CudaW4a8Wgmma.PrefillShapes > $L/tests_prefill_shapes.txt 2>&1
echo "== PrefillShapes rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_prefill_shapes.txt | head; el all
