#!/usr/bin/env bash
# The test command (CI runs exactly this, .ci/run): installs missing dependencies, builds the CPU
# tree (and, when nvcc is present, the CUDA tree's kernel library, device tests, benchmarks and v4rt
# binary: target v4rt_cuda_checks), runs every CPU test (unit, golden, mpi, e2e; GPU-labelled tests
# skip cleanly without a device), then the ASan + UBSan build of the unit tests and a short run of
# every fuzzer (scripts/sanitize.sh). Fails when any test fails or any sanitizer reports anything.
#   scripts/test.sh [extra ctest args for the ordinary build]
# Environment: V4RT_JOBS (parallel jobs, default nproc); V4RT_TEST_SANITIZERS=0 skips the
# sanitizer stage (a quicker local run; CI never sets it); V4RT_BUILD_CUDA=0 skips the CUDA tree
# where nvcc is installed (a quicker local run; CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/install-deps.sh
JOBS=${V4RT_JOBS:-$(nproc)}
export V4RT_JOBS=$JOBS
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release -j "$JOBS"
if [[ ${V4RT_BUILD_CUDA:-1} != 0 ]] && { command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; }; then
  cmake --preset cuda-release >/dev/null
  # The CUDA sources and what links them (tests/cuda/CMakeLists.txt): the rest is the CPU tree's.
  cmake --build --preset cuda-release -j "$JOBS" --target v4rt_cuda_checks
fi
t1=$(date +%s)
rc=0
ctest --test-dir build/cpu --output-on-failure -j "$JOBS" "$@" || rc=1
t2=$(date +%s)
src=0
if [[ ${V4RT_TEST_SANITIZERS:-1} != 0 ]]; then
  bash scripts/sanitize.sh || src=1
fi
t3=$(date +%s)
echo "test.sh: deps+build $((t1 - t0)) s, tests $((t2 - t1)) s ($([[ $rc == 0 ]] && echo passed || echo FAILED))," \
     "sanitizers $((t3 - t2)) s ($([[ ${V4RT_TEST_SANITIZERS:-1} == 0 ]] && echo skipped ||
                                   { [[ $src == 0 ]] && echo passed || echo FAILED; })), total $((t3 - t0)) s"
exit $((rc | src))
