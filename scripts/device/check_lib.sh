# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Sourced by the one-call device scripts (pending_check.sh, attention_view_check.sh), from the
# repository root:
#   check_begin LOGS LIMIT TARGETS...   the stage logs go to $L (LOGS unless the LOGS variable is
#                                       set) and, after every stage, into one archive under $OUT
#                                       (the device returns only a few files); the caller's output
#                                       is copied to $OUT/summary.txt. Builds TARGETS into $B
#                                       (BUILD, default build-gpu) by scripts/device/run.sh within
#                                       LIMIT seconds, names the GPU, sources devdeps.sh (NCU).
#   el NAME                             ends a stage: its time from the start, the logs archived.
#   graphs_stage [LIMIT]                test_cuda_graphs (LIMIT s, 150) into $L/graphs.txt, its
#                                       cases and [graphs] lines printed; golden_stage: test_gpu_golden.
#   step NAME CONFIG ARGS               a `bench step` stage: $B's bench_step with ARGS (and
#                                       --config CONFIG unless empty) into $L/step_NAME.txt, the
#                                       lines matching STEP_LINES printed.
#   prefill_stage TAG CONTEXT CHUNK CONFIG [LIMIT]
#                                       a `bench prefill` stage (Flash, 2 layers; --config CONFIG
#                                       unless empty; LIMIT s, 120) into $L/p_TAG.txt, the
#                                       tokens/s, the main ops, the total and the projection printed.
#   tests_stage NAME LIMIT [FILTER]     test_cuda_kernels (--gtest_filter FILTER) into
#                                       $L/tests_NAME.txt, its verdict lines printed, its exit
#                                       status in TESTS_RC.
#   hca_profile_stage TAG [CONFIG]      the stall profile (scripts/device/ncu_prefill.sh, with the
#                                       memory section) of the 61st wgmma attention launch of a 1M
#                                       prefill (HCA launches past 2,048 entries: chunks 32 on; the
#                                       61st is chunk 92), --config CONFIG unless empty, into
#                                       $L/ncu_TAG_*; its first lines printed.
check_begin() {
  local logs=$1 limit=$2
  shift 2
  OUT=${OUT:-$PWD/out/device}; mkdir -p "$OUT"; B=${BUILD:-build-gpu}
  L=${LOGS:-$logs}; rm -rf "$L"; mkdir -p "$L"
  exec > >(tee "$OUT/summary.txt") 2>&1
  t0=$(date +%s)
  BUILD=$B TARGETS="$*" JOBS=${JOBS:-16} timeout "$limit" bash scripts/device/run.sh none > "$L/build.txt" 2>&1
  tail -3 "$L/build.txt"; grep -m5 -E "error" "$L/build.txt"
  nvidia-smi --query-gpu=name --format=csv,noheader; el build
  source scripts/device/devdeps.sh
}
el() { echo "--- $1 at $(( $(date +%s) - t0 )) s"; tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; }
STEP_LINES="^=== |decode step|graphs:|GPU time|moe_experts|copy_rows|sparse_attention|total .op|EXTRAPOLATION"
step() {
  timeout 100 "$B/tests/cuda/bench_step" bench step $3 ${2:+--config $2} > "$L/step_$1.txt" 2>&1
  echo "== bench step, $1 ${2:-(defaults)}"
  grep -E "$STEP_LINES" "$L/step_$1.txt"; el "step_$1"
}
graphs_stage() {
  timeout "${1:-150}" "$B/tests/cuda/test_cuda_graphs" > "$L/graphs.txt" 2>&1; echo "graphs rc $?"
  grep -E "OK \]|FAILED|Failure|\[graphs\]|bypassed|refused" "$L/graphs.txt" | head -60; el graphs
}
golden_stage() {
  timeout 100 "$B/tests/cuda/test_gpu_golden" > "$L/golden.txt" 2>&1; echo "golden rc $?"
  grep -E "OK \]|FAIL" "$L/golden.txt"; el golden
}
prefill_stage() {
  local cfg=(); [[ -n ${4:-} ]] && cfg=(--config "$4")
  timeout "${5:-120}" "$B/tests/cuda/bench_step" bench prefill --backend cuda --preset flash --layers 2 --chunk "$3" \
    --context "$2" "${cfg[@]}" > "$L/p_$1.txt" 2>&1
  echo "== prefill $1 rc $?"
  local lines="launches:|prefill:|moe_experts|sparse_attention |indexer_scores|topk|grouped_linear|fp8 32768|rms_norm"
  grep -E "$lines|total|PROJECTION" "$L/p_$1.txt"
  el "prefill $1"
}
tests_stage() {
  timeout "$2" "$B/tests/cuda/test_cuda_kernels" --gtest_brief=1 ${3:+--gtest_filter="$3"} > "$L/tests_$1.txt" 2>&1
  TESTS_RC=$?
  echo "== op tests $1 rc $TESTS_RC"
  grep -E "FAILED|PASSED|Failure|tests ran" "$L/tests_$1.txt" | head -30; el "tests $1"
}
hca_profile_stage() {
  BUILD=$B OUT=$L NCU_KERNEL=sparse_attention_wgmma NCU_SKIP=60 NCU_CONTEXT=1048576 NCU_TAG=$1 \
    NCU_CONFIG=${2:-} NCU_SECTIONS="MemoryWorkloadAnalysis" NCU_TIMEOUT=200 \
    timeout 240 bash scripts/device/ncu_prefill.sh > "$L/ncu_$1.txt" 2>&1
  echo "== ncu HCA attention ($1) rc $?"; head -45 "$L/ncu_$1.txt"; el "ncu_$1"
}
