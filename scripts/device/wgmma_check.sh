#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One short device call for the wgmma kernels behind debug switches (docs/CUDA.md, "Not yet run on
# a GPU"): builds the op tests and `bench_step`, runs the attention and W4A8 op tests (the wgmma
# prefill attention, attention_wgmma.cu, and the warp-specialized W4A8 GEMM, fp4_gemm_wgmma_ws.cu,
# are forced there against the CPU / fp64 references), then an 8K `bench prefill` with the
# defaults and with each switch on (scripts/device/attention_wgmma.yaml, expert_wgmma_ws.yaml).
#   JOBS=16 bash scripts/device/wgmma_check.sh        (carry .devdeps; logs under $OUT)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}
export TARGETS="test_cuda_kernels bench_step"; B=${BUILD:-build-gpu}
timeout 150 bash scripts/device/run.sh none > "$OUT/build.txt" 2>&1; tail -1 "$OUT/build.txt"
nvidia-smi --query-gpu=name --format=csv,noheader
source scripts/device/devdeps.sh
T=$B/tests/cuda/test_cuda_kernels
timeout 60 "$T" --gtest_filter='CudaAttentionTc.*' > "$OUT/attn.txt" 2>&1; echo "attention tests rc $?"
grep -E "wgmma|FAIL|OK \]" "$OUT/attn.txt" | grep -vE "bad=0$" | head -12
timeout 90 "$T" --gtest_filter='CudaW4a8*:CudaMoe.*:-CudaW4a8Wgmma.PrefillShapes' > "$OUT/w4.txt" 2>&1
echo "W4A8 / MoE tests rc $?"; grep -E "FAIL|OK \]" "$OUT/w4.txt" | head -24
P="$B/tests/cuda/bench_step bench prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192"
for c in none attention_wgmma expert_wgmma_ws; do
  cf=""; [[ $c != none ]] && cf="--config scripts/device/$c.yaml"
  echo "=== bench prefill 8K, config $c"
  # shellcheck disable=SC2086
  timeout 40 $P $cf > "$OUT/p8_$c.txt" 2>&1; grep -E "prefill:|moe_experts|sparse_attention |total" "$OUT/p8_$c.txt"
done
