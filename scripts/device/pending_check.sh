#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine) for every path built but not yet run on a
# GPU (docs/PERFORMANCE.md, "Pending on the GPU"), most important first, so that a call cut short
# still returns the first results: builds the op tests and bench_step (the GPU golden and the graph
# tests before they run); runs the decode op tests (the tensor-core decode attention with candidate splits, the FP8
# decode-batch indexer, the FP8 prefill indexer's shared key pipeline); `bench step` at batch 1, 64
# and 256 with the defaults and with the tensor-core decode kernels off (scripts/device/decode_tc_off.yaml)
# and as recorded graphs (their GPU time: the step without host launch gaps); test_gpu_golden; an
# 8K `bench prefill`; the prefill attention and W4A8 op tests; 8K prefill with the wgmma attention
# and the warp-specialized W4A8 GEMM; test_cuda_graphs. Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/pending_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; mkdir -p "$OUT"; B=${BUILD:-build-gpu}
# The logs go to $L and, after every stage, into one archive under $OUT (the device returns only a
# few files); this script's own output is copied to $OUT/summary.txt.
L=${LOGS:-/tmp/pending_logs}; rm -rf "$L"; mkdir -p "$L"
exec > >(tee "$OUT/summary.txt") 2>&1
t0=$(date +%s); el() { echo "--- $1 at $(( $(date +%s) - t0 )) s"; tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; }
BUILD=$B TARGETS="test_cuda_kernels bench_step bench_cuda" JOBS=${JOBS:-16} timeout 300 bash scripts/device/run.sh none > $L/build.txt 2>&1; tail -3 $L/build.txt
nvidia-smi --query-gpu=name --format=csv,noheader; el build
source scripts/device/devdeps.sh
T=$B/tests/cuda/test_cuda_kernels
tst() { timeout $2 $T --gtest_filter="$1" > $L/t.txt 2>&1; echo "== $1 rc $?"; cat $L/t.txt >> $L/tests.txt
  grep -E "FAIL|OK \]|differ" $L/t.txt | grep -vE "bad=0$" | head -30; }
tst 'CudaAttentionTc.Decode*:CudaOps.SparseAttention*:CudaIndexerFp8Decode.*:CudaOps.IndexerScores*' 120; el tests1
P="$B/tests/cuda/bench_step bench"
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192"
timeout 90 $P step $S > $L/step_default.txt 2>&1; grep -E "^=== |decode step|sparse_attention|indexer_scores|moe_experts|129280|total .op" $L/step_default.txt; el step
timeout 90 $P step $S --config scripts/device/decode_tc_off.yaml > $L/step_tc_off.txt 2>&1; grep -E "^=== |decode step|sparse_attention|indexer_scores" $L/step_tc_off.txt; el step_tc_off
timeout 90 $P step $S --config scripts/device/graphs_on.yaml > $L/step_graphs.txt 2>&1; grep -E "^=== |decode step|graphs:|GPU time" $L/step_graphs.txt; el graphs
timeout 150 $B/tests/cuda/bench_cuda - fp4 > $L/bench_fp4.txt 2>&1; echo "bench_cuda fp4 rc $?"
grep -E "device|decode T=(1|16|64|256) |GB/s = " $L/bench_fp4.txt | head -60; el bench_fp4
BUILD=$B TARGETS="test_gpu_golden test_cuda_graphs" JOBS=${JOBS:-16} timeout 200 bash scripts/device/run.sh none > $L/build2.txt 2>&1; tail -1 $L/build2.txt
source scripts/device/devdeps.sh
timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt; el golden
NCU_PARTS=step BUILD=$B OUT=$L NCU_TIMEOUT=80 timeout 170 bash scripts/device/ncu_decode.sh; el ncu_step
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/p8_none.txt 2>&1
grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|total" $L/p8_none.txt; el prefill
tst 'CudaAttentionTc.Prefill*:CudaW4a8*:CudaMoe.*:-CudaW4a8Wgmma.PrefillShapes' 120; el tests2
for c in attention_wgmma expert_wgmma_ws; do
  timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 --config scripts/device/$c.yaml > $L/p8_$c.txt 2>&1
  echo "== prefill 8K $c"; grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|total" $L/p8_$c.txt
done; el prefill2
timeout 60 $B/tests/cuda/test_cuda_graphs > $L/graphs.txt 2>&1; echo "graphs rc $?"; grep -E "OK \]|FAIL" $L/graphs.txt; el all
NCU_PARTS=detail BUILD=$B OUT=$L timeout 300 bash scripts/device/ncu_decode.sh; el ncu_detail
