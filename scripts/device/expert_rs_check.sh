#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine) for the register-operand W4A8 expert GEMM
# (fp4_gemm_wgmma_rs.cu): builds; the W4A8 and MoE op tests (each tensor-core kernel against fp64,
# the register-operand kernel bit for bit the wgmma kernel); an 8K `bench prefill` as configured by
# default, then with the kernel (scripts/device/expert_wgmma_rs.yaml); its stall profile
# (scripts/device/ncu_prefill.sh); `bench_cuda - fp4` (every expert kernel at the prefill shapes);
# the 1M-token prefill with the kernel. Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/expert_rs_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; mkdir -p "$OUT"; B=${BUILD:-build-gpu}
L=${LOGS:-/tmp/rs_logs}; rm -rf "$L"; mkdir -p "$L"
exec > >(tee "$OUT/summary.txt") 2>&1
t0=$(date +%s); el() { echo "--- $1 at $(( $(date +%s) - t0 )) s"; tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; }
BUILD=$B TARGETS="test_cuda_kernels bench_step bench_cuda" JOBS=${JOBS:-16} \
  timeout 360 bash scripts/device/run.sh none > $L/build.txt 2>&1; tail -3 $L/build.txt; grep -m5 -E "error" $L/build.txt
nvidia-smi --query-gpu=name --format=csv,noheader; el build
source scripts/device/devdeps.sh
T=$B/tests/cuda/test_cuda_kernels
timeout 200 $T --gtest_brief=1 --gtest_filter="${TEST_FILTER:-CudaW4a8*:CudaMoe*}" > $L/tests.txt 2>&1
echo "== W4A8 / MoE tests rc $?"; grep -E "FAILED|PASSED|Failure|differ|Expected|Which is|wgmma max" $L/tests.txt | head -40; el tests
P="$B/tests/cuda/bench_step bench"
RS=scripts/device/expert_wgmma_rs.yaml
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/p8.txt 2>&1
grep -E "prefill:|moe_experts|sparse_attention |total|PROJECTION" $L/p8.txt; el prefill
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 --config $RS > $L/p8_rs.txt 2>&1
rs_rc=$?; echo "== 8K prefill, register-operand experts rc $rs_rc"
grep -E "prefill:|moe_experts|total|PROJECTION" $L/p8_rs.txt; el prefill_rs
if [[ $rs_rc == 0 ]]; then
  BUILD=$B OUT=$L NCU_KERNEL=wgmma_rs NCU_CONFIG=$RS NCU_SKIP=2 NCU_TAG=experts_rs timeout 150 bash scripts/device/ncu_prefill.sh \
    > $L/ncu_rs.txt 2>&1
  echo "== ncu rs rc $?"; head -24 $L/ncu_rs.txt; head -40 $L/ncu_experts_rs_top.txt | cut -c1-120; el ncu
fi
timeout 150 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "== bench_cuda fp4 rc $?"
grep -E "prefill T=" $L/bench_fp4.txt | head -30; el fp4
if [[ $rs_rc == 0 ]]; then
  timeout ${LONG_TIMEOUT:-100} $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 1048576 \
    --config $RS > $L/p1m_rs.txt 2>&1
  echo "== 1M prefill, register-operand experts rc $?"
  grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|total|PROJECTION" $L/p1m_rs.txt; el all
fi
