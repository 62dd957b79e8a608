#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 6 minutes from a fresh machine): the wgmma attention in clusters of two
# (kernels/cuda/attention_wgmma.cu). The attention op tests (a hang ends at its bound), golden
# tiny-a, `bench prefill` at 8K and 1M by default (one block per token) and at 1M with the clusters
# (attention_cluster.yaml), then [PROFILE=0: not] the 1M HCA launch's profile with memory and the
# clusters (scripts/device/ncu_prefill.sh), as hca_check.sh takes it without. SHORT=1: no golden
# or 8K stage.
# Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [PROFILE=0] [SHORT=1] bash scripts/device/cluster_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, golden_stage, prefill_stage, tests_stage, hca_profile_stage
check_begin /tmp/cluster_logs 300 test_cuda_kernels bench_step $([[ ${SHORT:-0} == 1 ]] || echo test_gpu_golden)
tests_stage attn 120 'CudaAttentionTc*:CudaOps.SparseAttention*'
grep -E "wgmma.*differ|differ.*wgmma" "$L/tests_attn.txt" | head -30
[[ ${SHORT:-0} == 1 ]] || golden_stage
[[ ${SHORT:-0} == 1 ]] || prefill_stage 8k 8192 8192 ""
prefill_stage 1m 1048576 8192 "" 150
prefill_stage 1m_cluster 1048576 8192 scripts/device/attention_cluster.yaml 150
[[ ${PROFILE:-1} == 1 ]] && hca_profile_stage attn_pair scripts/device/attention_cluster.yaml
