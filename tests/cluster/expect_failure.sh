#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs a command that must fail: passes when it exits non-zero within MAX_S seconds and its output
# matches every given extended regex. Usage:
#   expect_failure.sh MAX_S 'regex1;regex2' command args...
set -u
max_s=$1; patterns=$2; shift 2
out=$(mktemp)
start=$(date +%s.%N)
hard_s=$((${max_s%.*} + 20))
timeout --kill-after=5 "$hard_s" "$@" >"$out" 2>&1
rc=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
cat "$out"
echo "--- exit code $rc after ${elapsed} s (limit ${max_s} s)"
status=0
if [[ $rc -eq 0 ]]; then echo "FAIL: the command succeeded but was expected to fail"; status=1; fi
if (( $(echo "$elapsed >= $hard_s" | bc) )); then echo "FAIL: the command hung (killed by timeout)"; status=1; fi
if (( $(echo "$elapsed > $max_s" | bc) )); then echo "FAIL: took ${elapsed} s > ${max_s} s"; status=1; fi
IFS=';' read -ra res <<<"$patterns"
for re in "${res[@]}"; do
  if ! grep -Eq "$re" "$out"; then echo "FAIL: output does not match /$re/"; status=1; fi
done
rm -f "$out"
[[ $status -eq 0 ]] && echo "PASS"
exit $status
