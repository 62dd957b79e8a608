#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 9 minutes from a fresh machine): the state of the GPU path on this
# machine, and where the two largest prefill ops stall. Builds the op tests, test_gpu_golden and
# bench_step; runs the indexer, top-k, W4A8 and MoE op tests and golden tiny-a (with the bf16
# against F32 activations case); `bench prefill` at 8K (also with the rounded activations and the
# indexer scores in F32, f32_activations.yaml, and with the expert GEMM one block per tile,
# expert_ws_blocks.yaml) and at 1M (full per-op tables in the logs); `bench step` at batch 1 and 256
# (2 layers); the 1M prefill with f32_activations.yaml; [PROFILE=0: not] the stall profiles
# (scripts/device/ncu_prefill.sh) of the warp-specialized expert GEMM at 8K and of a late-chunk HCA
# attention launch (wgmma kernel) of a 1M prefill.
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [PROFILE=0] bash scripts/device/baseline_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, step, golden_stage, prefill_stage, tests_stage, hca_profile_stage
check_begin /tmp/base_logs 300 test_cuda_kernels test_gpu_golden bench_step
# Most needed first: a call cut short by its time limit keeps the stages it finished.
tests_stage ops 150 'CudaOps.IndexerScores*:CudaIndexer*:CudaOps.Topk*:CudaTopk*:CudaW4a8*:CudaMoe*'
golden_stage
prefill_stage 8k 8192 8192 ""
prefill_stage 8k_f32 8192 8192 scripts/device/f32_activations.yaml
prefill_stage 8k_blocks 8192 8192 scripts/device/expert_ws_blocks.yaml
prefill_stage 1m 1048576 8192 "" 150
step b1_256 "" "--synthetic --backend cuda --preset flash --layers 2 --batch 1,256 --context 8192 --iters 10"
prefill_stage 1m_f32 1048576 8192 scripts/device/f32_activations.yaml 150
if [[ ${PROFILE:-1} == 1 ]]; then
  BUILD=$B OUT=$L NCU_TAG=experts timeout 200 bash scripts/device/ncu_prefill.sh > $L/ncu_experts.txt 2>&1
  echo "== ncu experts rc $?"; head -30 $L/ncu_experts.txt; el ncu_experts
  hca_profile_stage attn_hca
fi
