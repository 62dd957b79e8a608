#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine): the W4A8 expert GEMM's activation tiles by
# TMA and by TMA multicast in clusters of two, each with and without the weight ring
# (kernels/cuda/fp4_gemm_wgmma_ws.cu, debug.cuda_expert_ws_a_copy / cuda_expert_ws_weight_ring),
# and the attention checks. The W4A8 / MoE, attention and Hadamard op tests (a
# hang ends at its bound), `bench_cuda - fp4` at prefill sizes (every form), golden tiny-a, `bench prefill`
# at 8K in each form, `bench step` at batch 1 and 256, at 1M by default (the attention in clusters)
# and one attention block a token (attention_single.yaml).
# SHORT=1: no 1M stage.
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [SHORT=1] bash scripts/device/expert_tma_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, golden_stage, prefill_stage, tests_stage
check_begin /tmp/tma_logs 300 test_cuda_kernels bench_step bench_cuda test_gpu_golden
tests_stage w4a8 150 'CudaW4a8*:CudaMoe*'
forms_ok=$TESTS_RC  # a new form that fails or hangs there is not timed below
tests_stage attn 120 'CudaAttentionTc*:CudaOps.SparseAttention*:CudaOps.Hadamard:CudaOps.RmsNorm*'
BENCH_FP4_MODES=2 timeout $(( forms_ok == 0 ? 150 : 60 )) "$B/tests/cuda/bench_cuda" - fp4 > "$L/bench_fp4.txt" 2>&1
echo "== bench_cuda fp4 rc $?"; grep -E "wgmma ws, A by|wgmma [0-9.]+ TFLOP" "$L/bench_fp4.txt"; el fp4
golden_stage
prefill_stage 8k 8192 8192 ""
if [[ $forms_ok == 0 ]]; then
  for form in cp_async tma_pair ring ring_pair; do
    prefill_stage "8k_$form" 8192 8192 "scripts/device/expert_$form.yaml" 75
  done
fi
step decode "" "--synthetic --backend cuda --preset flash --layers 2 --batch 1,256 --context 8192 --iters 10"
[[ ${SHORT:-0} == 1 ]] || prefill_stage 1m 1048576 8192 "" 150
[[ ${SHORT:-0} == 1 ]] || prefill_stage 1m_single 1048576 8192 scripts/device/attention_single.yaml 150
