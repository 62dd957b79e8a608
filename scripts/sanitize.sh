#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# ASan + UBSan (clang) build of the CPU unit tests and the libFuzzer targets, then every unit test
# and a short run of every fuzzer (ctest -L 'unit|fuzz'). Only the targets those tests need are
# built (the golden, mpi and gpu suites are not), so it fits a small CI machine.
#   scripts/sanitize.sh [extra ctest args]
# Environment: V4RT_JOBS (parallel jobs, default nproc), V4RT_FUZZ_SECONDS (per fuzzer, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${V4RT_JOBS:-$(nproc)}
BUILD=build/cpu-asan
start=$(date +%s)
cmake --preset cpu-asan -DV4RT_FUZZ_SECONDS="${V4RT_FUZZ_SECONDS:-5}" >/dev/null
# Test names are target names for unit tests; fuzz_<t>_smoke runs target fuzz_<t>. The CLI tests
# also need the v4rt executable.
mapfile -t tests < <(ctest --test-dir "$BUILD" -N -L 'unit|fuzz' | sed -n 's/^ *Test *#[0-9]*: //p')
targets=(v4rt)
for t in "${tests[@]}"; do targets+=("${t%_smoke}"); done
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"
built=$(date +%s)
# halt_on_error: the first report fails the test; leaks are reported at exit (detect_leaks).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The serving and batch suites run the whole tiny model for hundreds of tokens; at -O1 under ASan
# that takes minutes per case (test_prefix_reuse: 15 min, test_batch_*: > 5 min). They are left out
# here, except test_http_server without its generation-heavy cases (model load, request errors,
# auth, cancellation and queue limits are kept); all of them run in full in the ordinary build.
# V4RT_ASAN_EXCLUDE overrides the list (a ctest -E regex).
SLOW=${V4RT_ASAN_EXCLUDE:-'test_prefix_reuse|test_http_server|test_batch_'}
rc=0
ctest --test-dir "$BUILD" -L 'unit|fuzz' -E "$SLOW" --output-on-failure -j "$JOBS" "$@" || rc=$?
if [[ -x "$BUILD/tests/launch/test_http_server" ]]; then
  echo "test_http_server (ASan subset)"
  (cd "$BUILD/tests/launch" && timeout 300 ./test_http_server \
      --gtest_filter='-*StreamedAndNonStreamed*:*ForcedToolCall*') || rc=1
fi
end=$(date +%s)
echo "sanitize.sh: ${#tests[@]} tests (slow serving/batch suites reduced, see above); build $((built - start)) s, tests $((end - built)) s, total $((end - start)) s"
exit $rc
