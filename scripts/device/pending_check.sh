#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One device call (about 8 minutes from a fresh machine) for every path built but not yet run on a
# GPU (docs/PERFORMANCE.md, "Pending on the GPU"), most important first, so that a call cut short
# still returns the first results: builds the op tests, bench_step and bench_cuda; runs every op
# test of test_cuda_kernels but the slow prefill-shape ones; `bench_cuda - gemv` (the decode GEMV at
# the Flash decode projections, L2-cold, CUDA cores and FP8 mma.sync); `bench step` at batch 1, 64
# and 256, with the decode GEMV on tensor cores (scripts/device/gemv_mma.yaml), with the routing
# layout in one kernel (scripts/device/route_small.yaml), then as recorded
# graphs (their GPU time: the step without host launch gaps); test_gpu_golden and test_cuda_graphs;
# Nsight Compute's detail (stalls, memory) of the decode GEMV, attention and FP4 GEMV at batch 1;
# an 8K `bench prefill`. Logs: $OUT/summary.txt and $OUT/logs.tgz.
#   bash scripts/device/pending_check.sh        (carry .devdeps)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; mkdir -p "$OUT"; B=${BUILD:-build-gpu}
# The logs go to $L and, after every stage, into one archive under $OUT (the device returns only a
# few files); this script's own output is copied to $OUT/summary.txt.
L=${LOGS:-/tmp/pending_logs}; rm -rf "$L"; mkdir -p "$L"
exec > >(tee "$OUT/summary.txt") 2>&1
t0=$(date +%s); el() { echo "--- $1 at $(( $(date +%s) - t0 )) s"; tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; }
BUILD=$B TARGETS="test_cuda_kernels bench_step bench_cuda test_gpu_golden test_cuda_graphs" JOBS=${JOBS:-16} \
  timeout 360 bash scripts/device/run.sh none > $L/build.txt 2>&1; tail -3 $L/build.txt; grep -m5 -E "error" $L/build.txt
nvidia-smi --query-gpu=name --format=csv,noheader; el build
source scripts/device/devdeps.sh
T=$B/tests/cuda/test_cuda_kernels
timeout 240 $T --gtest_brief=1 --gtest_filter="${TEST_FILTER:--CudaW4a8Wgmma.PrefillShapes:CudaLong*}" > $L/tests.txt 2>&1
echo "== test_cuda_kernels rc $?"; grep -E "FAILED|PASSED|fp8 gemv|Failure|differ" $L/tests.txt | grep -vE " 0 of | 0 \(codes\)" | head -40; el tests
timeout 120 $B/tests/cuda/bench_cuda - gemv > $L/bench_gemv.txt 2>&1; echo "bench_cuda gemv rc $?"
grep -E "device|M=(1|8) " $L/bench_gemv.txt; el gemv
P="$B/tests/cuda/bench_step bench"
S="--synthetic --backend cuda --preset flash --layers 2 --batch 1,64,256 --context 8192"
timeout 90 $P step $S > $L/step_default.txt 2>&1
grep -E "^=== |decode step|sparse_attention|indexer_scores|moe_experts|129280|grouped_linear|total .op" $L/step_default.txt; el step
timeout 90 $P step $S --config scripts/device/gemv_mma.yaml > $L/step_gemv_mma.txt 2>&1
echo "== gemv on tensor cores (scripts/device/gemv_mma.yaml)"; grep -E "^=== |decode step|linear fp8|total .op" $L/step_gemv_mma.txt; el step_mma
timeout 90 $P step $S --config scripts/device/route_small.yaml > $L/step_route_small.txt 2>&1
echo "== routing in one kernel (scripts/device/route_small.yaml)"; grep -E "^=== |decode step|moe_experts|total .op" $L/step_route_small.txt; el step_route
timeout 90 $P step $S --config scripts/device/graphs_on.yaml > $L/step_graphs.txt 2>&1; grep -E "^=== |decode step|graphs:|GPU time" $L/step_graphs.txt; el graphs
timeout 100 $B/tests/cuda/test_gpu_golden > $L/golden.txt 2>&1; echo "golden rc $?"; grep -E "OK \]|FAIL" $L/golden.txt
timeout 60 $B/tests/cuda/test_cuda_graphs > $L/graphs.txt 2>&1; echo "graphs rc $?"; grep -E "OK \]|FAIL" $L/graphs.txt; el golden
NCU_PARTS=detail NCU_BATCH=1 NCU_KERNELS="gemv_kernel sparse_attention_tc fp4_grouped_gemv" NCU_LAUNCHES=6 NCU_LINES=120 \
  NCU_EXTRA="--section SourceCounters" \
  BUILD=$B OUT=$L NCU_TIMEOUT=60 timeout 190 bash scripts/device/ncu_decode.sh; el ncu_detail
timeout 40 $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/p8.txt 2>&1
grep -E "prefill:|moe_experts|sparse_attention |indexer_scores|rms_norm|qdq|hc_pre|total" $L/p8.txt; el prefill
# The prefill expert GEMM in detail (8K chunk; the third launch: layer 0's down projection).
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 150 $NCU --clock-control none -k regex:wgmma_ws --launch-skip 2 --launch-count 1 --section SpeedOfLight \
  --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
  --section SourceCounters --section InstructionStats --section LaunchStats \
  $P prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 > $L/ncu_prefill_experts.txt 2>&1
echo "== ncu prefill experts rc $?"; grep -E "Duration|Throughput|Ipc|Issue Slots|Warp Cycles|Occupancy|stall|Stall|Grid Size|Registers" $L/ncu_prefill_experts.txt | head -40; el all
