#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The `mtp` step of scripts/device/run.sh, runnable alone: speculative decoding with the MTP block
# against plain decoding (`v4rt bench mtp`) on one Flash slice + MTP layer, written once by
# `v4rt bench checkpoint` (every core) and removed afterwards unless MTP_MODEL names it.
#   scripts/device/mtp.sh V4RT_BINARY LOG
# Environment: MTP_BACKEND (cuda; cpu for a rehearsal on the development machine), MTP_PRESET (flash;
# tiny for that rehearsal), MTP_LAYERS (main layers of the slice, default 2), MTP_MODEL (an existing checkpoint with an MTP block, or where the
# slice goes; default /dev/shm/v4rt-mtp-flash<layers>), MTP_ARGS (`bench mtp` runs, ';'-separated
# argument lists; default: official numerics, greedy and temperature 1, depths 1,2,3, 64 tokens).
# Prints each run's table (log lines of glog left out); the full output goes to LOG. Exit status 1
# when any run failed.
set -uo pipefail
v4rt=$1
log=$2
backend=${MTP_BACKEND:-cuda}
preset=${MTP_PRESET:-flash}
layers=${MTP_LAYERS:-2}
model=${MTP_MODEL:-/dev/shm/v4rt-mtp-$preset$layers}
rc=0
: > "$log"
if [[ ! -f $model/config.json ]]; then
  echo "=== v4rt bench checkpoint --preset $preset --layers $layers --mtp --out $model" | tee -a "$log"
  timeout 300 "$v4rt" bench checkpoint --preset "$preset" --layers "$layers" --mtp --out "$model" 2>&1 | tee -a "$log" || rc=1
fi
IFS=';' read -ra runs <<< "${MTP_ARGS:---numerics official;--numerics official --temperature 1}"
for args in "${runs[@]}"; do
  echo "=== v4rt bench mtp --model $model --backend $backend $args" | tee -a "$log"
  # shellcheck disable=SC2086
  timeout 240 "$v4rt" bench mtp --model "$model" --backend "$backend" $args > "$log.tmp" 2>&1
  code=$?
  [[ $code == 0 ]] || { rc=1; echo "(exit $code)" >> "$log.tmp"; }
  cat "$log.tmp" >> "$log"
  grep -vE "^[IWE][0-9]{4} " "$log.tmp" | tail -40
  [[ $code == 0 ]] || grep -E "^[EF][0-9]{4} |Check failed|error" "$log.tmp" | tail -10
  rm -f "$log.tmp"
done
[[ -z ${MTP_MODEL:-} ]] && rm -rf "$model"
exit $rc
