#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs tests/cluster/expect_failure.sh when this machine has at least NP GPUs (NCCL needs one per
# rank); exits 77 (skip) otherwise. Usage: gpu_fault.sh NP expect_failure.sh-arguments...
set -u
np=$1; shift
gpus=$( (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -c GPU) || echo 0)
if (( gpus < np )); then
  echo "needs $np GPUs, found $gpus: skipped"
  exit 77
fi
exec "$(dirname "$0")/../cluster/expect_failure.sh" "$@"
