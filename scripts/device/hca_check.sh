#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 7 minutes from a fresh machine): where the HCA attention of a 1M prefill
# stalls and what it reads (scripts/device/ncu_prefill.sh on the 61st wgmma attention launch, with
# the memory workload section), then what "Pending on the GPU" lists as unrun: test_cuda_graphs,
# golden tiny-a and every op test. PROFILE=0: no profile. Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   [PROFILE=0] bash scripts/device/hca_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/check_lib.sh  # check_begin, el, graphs_stage, golden_stage, tests_stage, hca_profile_stage
check_begin /tmp/hca_logs 300 test_cuda_kernels test_gpu_golden test_cuda_graphs bench_step
[[ ${PROFILE:-1} == 1 ]] && hca_profile_stage attn_hca
graphs_stage 120
golden_stage
tests_stage all ${TESTS_LIMIT:-240}
