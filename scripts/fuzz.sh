#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Open-ended fuzzing, outside CI: builds the libFuzzer targets (cpu-asan preset) and runs each for
# SECONDS with a random seed, keeping what it finds in build/cpu-asan/fuzz-long/<target>/. A crash
# input lands in .../artifacts/; fix the bug, then add the input to tests/fuzz/regressions/<target>/
# so the CI smoke run (tests/fuzz/smoke_fuzzer.sh) replays it for good.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
BUILD=build/cpu-asan
cmake --preset cpu-asan >/dev/null
mapfile -t all < <(sed -n 's/.*set(V4RT_FUZZ_TARGETS \(.*\)/\1/p;s/^ *\([a-z_ ]*\))$/\1/p' tests/fuzz/CMakeLists.txt | tr ' ' '\n' | sed '/^$/d')
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi
cmake --build "$BUILD" -j "${V4RT_JOBS:-$(nproc)}" --target "${targets[@]/#/fuzz_}"
rc=0
for t in "${targets[@]}"; do
  echo "== fuzz_$t, $seconds s"
  tests/fuzz/run_fuzzer.sh "$BUILD/tests/fuzz/fuzz_$t" "$t" "$seconds" "$BUILD/fuzz-long/$t" || rc=1
done
exit $rc
