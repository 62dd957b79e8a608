#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The GPU-machine recipe of DEVICE.md as one script: unpack the carried .devdeps packages under a
# prefix (never into /), configure the CUDA + NCCL build, build the requested targets with every
# core, then run the device tests and benchmarks, writing logs under $OUT.
#
# Prepare once on the development machine (the folder is git-ignored and travels with `carry`):
#   mkdir -p .devdeps && (cd .devdeps && apt-get download libgoogle-glog-dev libgoogle-glog0v6 \
#     libgflags-dev libgflags2.2 libunwind-dev libunwind8 libcli11-dev libpcre2-dev libpcre2-8-0 \
#     libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 pkgconf pkgconf-bin libpkgconf3 libcpp-httplib-dev \
#     libcpp-httplib0.11 libssl-dev zlib1g-dev libbrotli-dev libbrotli1)
#   (the last four: the headers httplib.h includes under the CPPHTTPLIB_*_SUPPORT defines of Debian's
#   cpp-httplib.pc, and the Brotli runtime libcpp-httplib.so links; see scripts/device/devdeps.sh.
#   Rename any downloaded name holding '%3a' (an epoch) to drop it: zlib1g-dev_1.2.13.dfsg-1_amd64.deb.)
# On the device (repository root):
#   scripts/device/run.sh [all|test|nccl|comm|sanitize|bench|golden|step|prefill|serve|mtp|mpijobs]...
# (comm: the distributed path on the device, docs/COMM.md: EP/TP device tests at np 2 and 4, every
# layout's CUDA logits against 1 rank, the NCCL fault test, `v4rt bench moe-comm`.
# mpijobs: `v4rt serve` + `v4rt bench serve` and `v4rt batch` under mpirun with CUDA ranks, per
# layout (ep2 tp2 sp2 at np 2, ep4_tp2 tp2_sp2 at np 4; on one GPU through the staged Comm), the
# batch outputs against a 1-rank batch; needs only the v4rt target and data/tokenizer carried;
# logs in $OUT/mpijobs; see scripts/device/mpi_jobs.sh and docs/COMM.md.)
# Environment: OUT (results, default out/device), BUILD (default build-gpu), JOBS (default nproc),
# TARGETS (override the build list), V4RT_GOLDEN_DIR (golden data; default tests/data/golden,
# which travels with the working tree),
# STEP_ARGS (extra `v4rt bench step` runs, ';'-separated argument lists; each may hold comma lists
# of --batch / --context), STEP_CSV (a CSV file every step run appends its per-op rows to),
# PREFILL_ARGS / PREFILL_CSV (the `prefill` step: `v4rt bench prefill` runs, ';'-separated argument
# lists, and a CSV file for their per-op rows),
# TEST_FILTER (gtest filter of the device op tests, default all), MTP_ARGS / MTP_LAYERS / MTP_MODEL
# (the `mtp` step: `v4rt bench mtp` on a Flash slice with its MTP layer; see scripts/device/mtp.sh),
# MPI_LAYOUTS / MPI_STEPS / MPI_SERVE_ARGS / ... (the `mpijobs` step; see scripts/device/mpi_jobs.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc)}
STEPS=${*:-all}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on the shared machines

# --- dependencies ------------------------------------------------------------------------------
# shellcheck source=scripts/device/devdeps.sh
source scripts/device/devdeps.sh  # sets DD, LD_LIBRARY_PATH, PKG_CONFIG_PATH

{ nvidia-smi; nvcc --version; cmake --version | head -1; } > "$OUT/machine.txt" 2>&1

# --- configure + build ---------------------------------------------------------------------------
if [[ -z "${TARGETS:-}" ]]; then
  TARGETS="test_cuda_kernels test_cuda_kv_cache test_cuda_sp_ops bench_cuda test_cuda_graphs test_gpu_golden bench_step v4rt"
  [[ -f tests/cuda/test_nccl_comm.cpp ]] && TARGETS="$TARGETS test_nccl_comm"
  [[ -f tests/cuda/test_ep_device.cpp ]] && TARGETS="$TARGETS test_ep_device fault_nccl"
fi
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DV4RT_ENABLE_CUDA=ON -DV4RT_ENABLE_NCCL=ON \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCMAKE_PREFIX_PATH=$DD/usr \
  -DUnwind_INCLUDE_DIR=$DD/usr/include/x86_64-linux-gnu \
  -DUnwind_LIBRARY=$DD/usr/lib/x86_64-linux-gnu/libunwind.so.8 > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "configure failed"; exit 1; }
built=""
for t in $TARGETS; do
  if cmake --build "$BUILD" -j "$JOBS" --target "$t" >> "$OUT/build.log" 2>&1; then built="$built $t"
  else echo "build of $t failed:"; grep -E "error|FAILED" "$OUT/build.log" | head -20; fi
done
echo "built:$built in $(( $(date +%s) - t0 )) s"

has() { [[ " $built " == *" $1 "* ]]; }
want() { [[ " $STEPS " == *" all "* || " $STEPS " == *" $1 "* ]]; }

# --- run -----------------------------------------------------------------------------------------
rc=0
if want test && has test_cuda_kernels; then
  # One process per test, so a fatal check in one op cannot hide the results of the others.
  bin="$BUILD/tests/cuda/test_cuda_kernels"
  : > "$OUT/test_cuda.log"
  for t in $("$bin" --gtest_list_tests --gtest_filter="${TEST_FILTER:-*}" | awk '/^[^ ]/{s=$1} /^  /{print s $1}'); do
    timeout 300 "$bin" --gtest_color=no --gtest_filter="$t" >> "$OUT/test_cuda.log" 2>&1 || { rc=1; echo "[ABORT/FAIL] $t" >> "$OUT/test_cuda.log"; }
  done
  grep -E "^\[compare\]|^\[layout\]|^\[cublaslt\]|FAILED|ABORT|OK \]|Check failed" "$OUT/test_cuda.log" | tail -200
  # The compact KV rows and the SP merges on the device against their host references.
  for t in test_cuda_kv_cache test_cuda_sp_ops; do
    has $t || continue
    bin=$(find "$BUILD/tests" -name $t -type f | head -1)
    timeout 300 "$bin" --gtest_color=no > "$OUT/$t.log" 2>&1 || rc=1
    echo "$t:"; grep -E "FAILED|OK \]|Check failed|SKIPPED" "$OUT/$t.log" | tail -40
  done
fi
if want nccl && has test_nccl_comm; then
  for np in 1 2; do
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun -np $np --oversubscribe \
      -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE=0 "$BUILD/tests/cuda/test_nccl_comm" --gtest_color=no \
      > "$OUT/nccl.tmp" 2>&1 || rc=1
    { echo "=== np=$np"; cat "$OUT/nccl.tmp"; } >> "$OUT/test_nccl.log"; rm -f "$OUT/nccl.tmp"
    echo "nccl np=$np:"; grep -E "PASSED|FAILED|SKIPPED|OK \]" "$OUT/test_nccl.log" | tail -20
  done
fi
if want comm && has test_ep_device && has v4rt; then
  export V4RT_GOLDEN_DIR=${V4RT_GOLDEN_DIR:-$PWD/.golden}
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 1500 ctest --test-dir "$BUILD" -L gpu \
    -R "test_ep_device|gpu_cli_logits|fault_nccl" --output-on-failure > "$OUT/comm.log" 2>&1 || rc=1
  grep -E "Test +#|tests passed|rel err|Skipped|process group" "$OUT/comm.log" | head -40
  : > "$OUT/moe_comm.log"
  for wire in "" "--fp8"; do
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -np 2 --oversubscribe \
      -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE=0 "$BUILD/launch/v4rt" bench moe-comm --backend cuda $wire \
      >> "$OUT/moe_comm.log" 2>&1 || rc=1
  done
  grep -vE "^[IW][0-9]{4}" "$OUT/moe_comm.log"
fi
if want sanitize && has test_cuda_kernels && command -v compute-sanitizer >/dev/null; then
  timeout 240 compute-sanitizer --tool memcheck --print-limit 10 "$BUILD/tests/cuda/test_cuda_kernels" --gtest_color=no \
    --gtest_filter='CudaOps.*:CudaLinear.*:CudaMoe.*:CudaReference.*:CudaGemm.Fp4*:CudaW4a8.*' > "$OUT/sanitizer.log" 2>&1
  echo "compute-sanitizer memcheck (rc $?):"; grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "$OUT/sanitizer.log" | head -20
fi
if want golden && has test_cuda_graphs; then
  # Decode steps recorded as CUDA graphs against the same steps op by op (graphs are off by
  # default; the benchmarks record them with --config scripts/device/graphs_on.yaml).
  export V4RT_GOLDEN_DIR=${V4RT_GOLDEN_DIR:-$PWD/tests/data/golden}
  timeout 300 "$BUILD/tests/cuda/test_cuda_graphs" --gtest_color=no > "$OUT/graphs.log" 2>&1 || rc=1
  grep -E "\[graphs\]|OK \]|FAILED|SKIPPED|Check failed|error" "$OUT/graphs.log" | head -30
fi
if want golden && has test_gpu_golden; then
  export V4RT_GOLDEN_DIR=${V4RT_GOLDEN_DIR:-$PWD/tests/data/golden}
  timeout 400 "$BUILD/tests/cuda/test_gpu_golden" --gtest_color=no > "$OUT/golden.log" 2>&1 || rc=1
  grep -E "gpu-golden|hidden after|OK \]|FAILED|SKIPPED|Check failed|error" "$OUT/golden.log" | head -40
fi
if want bench && has bench_cuda; then
  "$BUILD/tests/cuda/bench_cuda" "$OUT/bench.tsv" > "$OUT/bench.log" 2>&1
  grep -E "device|attention|indexer|topk|decode T=1 |decode T=4 " "$OUT/bench.log"
fi
if want step && has bench_step; then
  : > "$OUT/step.log"
  # bench_step is `v4rt bench step` / `v4rt bench indexer` built alone (tests/cuda/bench_step_main.cpp).
  IFS=';' read -ra runs <<< "${STEP_ARGS:---preset flash --layers 2 --batch 1 --context 1048576}"
  for args in "${runs[@]}"; do
    echo "=== v4rt bench step $args" | tee -a "$OUT/step.log"
    # shellcheck disable=SC2086
    timeout 500 "$BUILD/tests/cuda/bench_step" bench step --synthetic --backend cuda $args \
      ${STEP_CSV:+--csv "$STEP_CSV"} >> "$OUT/step.log" 2>&1 || rc=1
  done
  echo "=== v4rt bench indexer" >> "$OUT/step.log"
  timeout 120 "$BUILD/tests/cuda/bench_step" bench indexer --backend cuda >> "$OUT/step.log" 2>&1 || rc=1
  grep -vE "^\s*$" "$OUT/step.log" | grep -vE "^  (rms_norm|rope|qdq|copy|add|swiglu|fill|embedding|hadamard|compressor)" | tail -150
fi
if want prefill && has bench_step; then
  : > "$OUT/prefill.log"
  # `v4rt bench prefill` built alone (tests/cuda/bench_step_main.cpp).
  IFS=';' read -ra runs <<< "${PREFILL_ARGS:---preset flash --layers 2 --context 8192,131072 --chunk 8192}"
  for args in "${runs[@]}"; do
    echo "=== v4rt bench prefill $args" | tee -a "$OUT/prefill.log"
    # shellcheck disable=SC2086
    timeout 580 "$BUILD/tests/cuda/bench_step" bench prefill --backend cuda $args \
      ${PREFILL_CSV:+--csv "$PREFILL_CSV"} >> "$OUT/prefill.log" 2>&1 || rc=1
  done
  grep -vE "^\s*$" "$OUT/prefill.log" | grep -vE "^  (rms_norm|rope|qdq|copy|add|fill|embedding|hadamard)" | tail -150
fi
if want serve && has v4rt; then
  bash scripts/device/bench_serve.sh "$BUILD/launch/v4rt" data/tokenizer/tokenizer.json "$OUT/serve.log" \
    "$OUT/serve.jsonl" || rc=1  # SERVE_* settings: see bench_serve.sh; carry data/tokenizer
fi
if want mtp && has v4rt; then
  bash scripts/device/mtp.sh "$BUILD/launch/v4rt" "$OUT/mtp.log" || rc=1  # MTP_* settings: see mtp.sh
fi
if want mpijobs && has v4rt; then
  # MPI_* settings: see mpi_jobs.sh; carry data/tokenizer. One summary block per layout on stdout.
  bash scripts/device/mpi_jobs.sh "$BUILD/launch/v4rt" data/tokenizer/tokenizer.json "$OUT/mpijobs" || rc=1
fi
exit $rc
