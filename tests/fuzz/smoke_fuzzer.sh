#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The CI smoke run of one libFuzzer target, the same on every run: first every checked-in seed and
# saved regression input is replayed once, then a fixed-seed, fixed-count mutation run starts from
# them in a fresh work corpus (nothing found by an earlier run is read back, so the inputs tried
# depend only on the seeds, SEED and RUNS). Open-ended fuzzing is scripts/fuzz.sh, outside CI.
#   smoke_fuzzer.sh FUZZER_EXE TARGET_NAME RUNS SEED WORK_DIR
# Exits non-zero on any crash, leak, timeout or sanitizer report; crash inputs go to
# WORK_DIR/artifacts/ (add them to tests/fuzz/regressions/<target>/ once the bug is fixed).
set -euo pipefail
exe=$1 target=$2 runs=$3 seed=$4 work=$5
src=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work/corpus"
mkdir -p "$work/corpus" "$work/artifacts"
common=(-timeout=20 -rss_limit_mb=4096 -max_len=16384 -artifact_prefix="$work/artifacts/")
dirs=("$src/corpus/$target")
[[ -d "$src/regressions/$target" ]] && dirs+=("$src/regressions/$target")
# Comparison operands recorded for CMP mutations include pointers, so address randomization would
# make the mutations, hence the inputs tried, differ from run to run; run without it where allowed.
norand=()
setarch "$(uname -m)" -R true 2>/dev/null && norand=(setarch "$(uname -m)" -R)
mapfile -t inputs < <(find "${dirs[@]}" -type f | LC_ALL=C sort)
echo "smoke_fuzzer: replaying ${#inputs[@]} inputs of $target"
((${#inputs[@]})) && "${norand[@]}" "$exe" "${common[@]}" "${inputs[@]}"
[[ -f "$src/dict/$target.dict" ]] && common+=(-dict="$src/dict/$target.dict")
echo "smoke_fuzzer: $runs mutations of $target, seed $seed"
exec "${norand[@]}" "$exe" "${common[@]}" -seed="$seed" -runs="$runs" -print_final_stats=1 "$work/corpus" "${dirs[@]}"
