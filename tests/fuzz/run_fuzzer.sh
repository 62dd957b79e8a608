#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs one libFuzzer target for a bounded time from its seed corpus and saved regressions, with a
# random seed: open-ended fuzzing (scripts/fuzz.sh), never CI (CI runs smoke_fuzzer.sh).
#   run_fuzzer.sh FUZZER_EXE TARGET_NAME SECONDS WORK_DIR
# New corpus entries go to WORK_DIR/corpus (the checked-in seeds are read, never written), crash
# inputs to WORK_DIR/artifacts/. Prints libFuzzer's "Done N runs in S second(s)" line; exits non-zero
# on any crash, leak, timeout or sanitizer report.
set -euo pipefail
exe=$1 target=$2 seconds=$3 work=$4
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work/corpus" "$work/artifacts"
args=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=16384 -print_final_stats=1
      -artifact_prefix="$work/artifacts/")
[[ -f "$src/dict/$target.dict" ]] && args+=(-dict="$src/dict/$target.dict")
dirs=("$work/corpus" "$src/corpus/$target")
[[ -d "$src/regressions/$target" ]] && dirs+=("$src/regressions/$target")
exec "$exe" "${args[@]}" "${dirs[@]}"
