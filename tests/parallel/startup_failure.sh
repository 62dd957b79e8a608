#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A start-up error on one rank only must end the whole job, naming the error, instead of leaving
# the other ranks waiting in a collective of the start-up. Rank 0 gets the golden tiny-a checkpoint
# (it goes on to build the process groups), rank 1 a directory that does not exist (MPMD launch).
# Passes when mpirun exits non-zero within the deadline and stderr names the failure. Usage:
#   V4RT_GOLDEN_DIR=tests/data/golden startup_failure.sh V4RT MPIEXEC LAYOUT_YAML
set -u
v4rt=$1; mpiexec=$2; layout=$3
model=${V4RT_GOLDEN_DIR:?set V4RT_GOLDEN_DIR to tests/data/golden}/tiny-a/model
err=$(mktemp)
trap 'rm -f "$err" "${ids:-}"' EXIT
ids=$(mktemp)
echo "1 2 3" >"$ids"
args=(generate --config "$layout" --ids "$ids" --max-tokens 2)
t0=$(date +%s)
timeout 60 "$mpiexec" --oversubscribe -np 1 "$v4rt" "${args[@]}" --model "$model" \
  : -np 1 "$v4rt" "${args[@]}" --model /nonexistent/v4rt-model >/dev/null 2>"$err"
rc=$?
echo "mpirun exit status $rc after $(( $(date +%s) - t0 )) s"
grep -m3 -E "start-up failed|aborting" "$err" || true
if [ "$rc" -eq 124 ]; then echo "FAILED: the job hung"; exit 1; fi
if [ "$rc" -eq 0 ]; then echo "FAILED: the job succeeded"; exit 1; fi
grep -q "start-up failed.*nonexistent/v4rt-model" "$err" || { echo "FAILED: no error naming the model dir"; tail -20 "$err"; exit 1; }
echo "ok - a one-rank start-up failure ends the job"
