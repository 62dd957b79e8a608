#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 6 minutes from a fresh machine) for the prefill attention's bf16 views
# (kernels/cuda/attention_bf16_view.cu): builds the op tests, bench_step and test_gpu_golden; runs
# the attention op tests (every kernel with and without the views, bit for bit; TEST_FILTER picks
# others); `bench prefill` at
# 8K and 1M as by default (the views, the warp-specialized kernel), without the views
# (scripts/device/attention_no_view.yaml: the mma.sync kernel decoding per query) and on the
# mma.sync kernel with them (attention_mma.yaml), and test_gpu_golden (RUNS picks others);
# [PROFILE=1: the stall profile of the 8K prefill's attention (NCU_KERNEL, NCU_CONFIG)].
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/attention_view_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, prefill_stage
check_begin /tmp/view_logs 300 test_cuda_kernels bench_step test_gpu_golden
T=$B/tests/cuda/test_cuda_kernels
timeout 90 $T --gtest_brief=1 --gtest_filter="${TEST_FILTER:-CudaAttentionTc*:CudaOps.SparseAttention*}" > $L/tests_attn.txt 2>&1
echo "== op tests rc $?"; grep -E "FAILED|PASSED|Failure|differ" $L/tests_attn.txt | grep -vE " 0 of " | head -30
grep -c " 0 of " $L/tests_attn.txt; el tests_attn
# RUNS: "tag:context:config" entries (config a YAML under scripts/device/ or empty), in order.
RUNS=${RUNS:-"8k_view:8192: 8k_noview:8192:attention_no_view.yaml 8k_mma_view:8192:attention_mma.yaml \
  1m_view:1048576: 1m_mma_view:1048576:attention_mma.yaml golden 1m_noview:1048576:attention_no_view.yaml"}
for run in $RUNS; do
  if [[ $run == golden ]]; then
    timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt
    el golden; continue
  fi
  IFS=: read -r tag ctx cfg <<< "$run"
  limit=$([[ $ctx -gt 100000 ]] && echo 100 || echo 40)
  prefill_stage "$tag" "$ctx" 8192 "${cfg:+scripts/device/$cfg}" "$limit"
done
if [[ ${PROFILE:-0} == 1 ]]; then
  BUILD=$B OUT=$L NCU_KERNEL=${NCU_KERNEL:-sparse_attention_ws} NCU_CONFIG=${NCU_CONFIG:-} NCU_SKIP=0 NCU_TAG=attention \
    timeout 150 bash scripts/device/ncu_prefill.sh > $L/ncu_attention.txt 2>&1
  echo "== ncu prefill attention rc $?"; head -24 $L/ncu_attention.txt; head -30 $L/ncu_attention_top.txt; el ncu
fi
