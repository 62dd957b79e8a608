#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The `serve` step of scripts/device/run.sh, runnable alone: `v4rt bench serve` (random token-id
# prompts, fixed input and output lengths, a sweep of concurrencies) against `v4rt serve` on the GPU,
# serving a synthetic slice of a release preset written once by `v4rt bench checkpoint` (every core)
# and removed afterwards unless SERVE_MODEL names it. With SERVE_NP > 1 the server runs under
# `mpirun -np SERVE_NP` with the layout SERVE_PARALLEL (on one GPU the ranks share it through the
# staged Comm, docs/COMM.md).
#   scripts/device/bench_serve.sh V4RT_BINARY TOKENIZER_JSON LOG [JSON_OUT]
# Environment: SERVE_BACKEND (cuda; cpu for a rehearsal), SERVE_PRESET (flash), SERVE_LAYERS (2),
# SERVE_MODEL (an existing checkpoint, or where the slice goes; default /dev/shm/v4rt-serve-<preset><layers>),
# SERVE_NUMERICS (official), SERVE_NP (ranks, default 1: no mpirun), SERVE_PARALLEL (the `parallel:`
# section as a YAML flow map, e.g. "{tp: 1, sp: 1, ep: 2, dp: 2}"; dp*sp*tp must be SERVE_NP; see
# configs/ep2.yaml and its siblings), SERVE_YAML (extra top-level YAML lines for the server, e.g.
# "sampling: {draw: host}"), SERVE_SERVER (the server: section's fields), SERVE_FLAGS (extra
# `v4rt serve` arguments, e.g. "--rank-timeout 30"), SERVE_ARGS (`bench serve` runs, ';'-separated
# argument lists), SERVE_LABEL (the JSON lines' label), SERVE_READY_S (seconds
# the model load may take, default 600). Prints each run's table; the full output goes to LOG.
#
# Under mpirun only rank 0 serves HTTP: it binds the port and writes --port-file before the model
# loads (launch/cmd_serve.cpp), then /health answers 503 until every rank has loaded. So the script
# waits for the port file, then for /health 200, giving up as soon as the launcher exits. The stop
# is SIGTERM to rank 0 (its shutdown plan releases the other ranks and mpirun exits 0; SIGTERM to
# mpirun aborts the job: exit status 1), then to mpirun, then SIGKILL to the whole session. The
# server runs in a session of its own (scripts/device/job_lib.sh), so no rank is left behind, and a
# rank that was is named and counted as a failure.
# Exit status 1 when a run failed, the server did not start or did not stop cleanly (exit status
# other than 0, or a process left behind).
set -uo pipefail
v4rt=$1; tokenizer=$2; log=$3; json=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/device/job_lib.sh
source "$here/job_lib.sh"
preset=${SERVE_PRESET:-flash}
layers=${SERVE_LAYERS:-2}
model=${SERVE_MODEL:-/dev/shm/v4rt-serve-$preset$layers}
np=${SERVE_NP:-1}
work=$(mktemp -d)
trap 'job_end 5 >/dev/null 2>&1; rm -rf "$work"' EXIT
trap 'exit 143' TERM INT
: > "$log"
rc=0
if [[ ! -f $model/config.json ]]; then
  echo "=== v4rt bench checkpoint --preset $preset --layers $layers --out $model" | tee -a "$log"
  timeout 300 "$v4rt" bench checkpoint --preset "$preset" --layers "$layers" --out "$model" >> "$log" 2>&1 || exit 1
fi
cat > "$work/serve.yaml" <<YAML
model: $model
numerics: ${SERVE_NUMERICS:-official}
server: {host: 127.0.0.1, port: 0, ${SERVE_SERVER:-max_queue: 4096, max_running: 256, max_batch_tokens: 8192}}
${SERVE_PARALLEL:+parallel: $SERVE_PARALLEL}
${SERVE_YAML:-}
YAML
serve=("$v4rt" serve --config "$work/serve.yaml" --backend "${SERVE_BACKEND:-cuda}" --tokenizer "$tokenizer"
  --port-file "$work/port")
# shellcheck disable=SC2206
serve+=(${SERVE_FLAGS:-})
if ((np > 1)); then
  echo "=== mpirun -np $np v4rt serve, parallel: ${SERVE_PARALLEL:-(none)}" >> "$log"
  job_start "$log" mpirun -np "$np" --oversubscribe ${LD_LIBRARY_PATH:+-x LD_LIBRARY_PATH} -x NCCL_NVLS_ENABLE=0 \
    "${serve[@]}"
else
  job_start "$log" "${serve[@]}"
fi

# /health of the server: 0 when it answers 200 (bash's /dev/tcp: no curl needed).
healthy() {
  local status=
  exec 3<> "/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  read -r -t 10 _ status _ <&3
  exec 3<&- 3>&-
  [[ $status == 200 ]]
}
start=$SECONDS
ready=0
for _ in $(seq 1 1800); do [[ -f $work/port ]] && break; job_alive || break; sleep 0.1; done
if [[ -f $work/port ]]; then
  port=$(cat "$work/port")
  while job_alive && ((SECONDS - start < ${SERVE_READY_S:-600})); do
    healthy 2>/dev/null && { ready=1; break; }
    sleep 0.5
  done
fi
if ((!ready)); then
  echo "server did not start (np $np, $((SECONDS - start)) s; launcher $(job_alive && echo running || echo exited))"
  job_end 10
  grep -vE "^[IW][0-9]{4} " "$log" | tail -20
  exit 1
fi
echo "server ready: np $np, $((SECONDS - start)) s" >> "$log"
# The label names the cards the server ran on (nvidia-smi), e.g. "1xNVIDIA H100 80GB HBM3".
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
label=${SERVE_LABEL:-1x${gpu_name:-${SERVE_BACKEND:-cuda}} $preset ${layers}-layer slice}
IFS=';' read -ra runs <<< "${SERVE_ARGS:---input-len 8192 --output-len 1024 --concurrency 1,16,64 --time-limit 120}"
for args in "${runs[@]}"; do
  echo "=== v4rt bench serve $args" | tee -a "$log"
  # shellcheck disable=SC2086
  "$v4rt" bench serve --port "$port" --wait-ready 60 $args ${json:+--json-out "$json" --append} \
    --label "$label" > "$work/out" 2>&1 || rc=1
  cat "$work/out" >> "$log"
  grep -vE "^[IWE][0-9]{4} " "$work/out" | tail -30
done
curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E "^v4rt_(steps|tokens|prefix)" | head -20 >> "$log"
first=$JOB_PID
((np > 1)) && first=$(job_rank_pid 0 || echo "$JOB_PID")
job_end 30 "$first"
echo "server stopped: exit status $JOB_STATUS${JOB_LEFT:+, left behind (killed):$JOB_LEFT}" >> "$log"
if ((JOB_STATUS != 0)) || [[ -n $JOB_LEFT ]]; then
  echo "server did not stop cleanly: exit status $JOB_STATUS${JOB_LEFT:+, processes left behind (killed):$JOB_LEFT}"
  rc=1
fi
[[ -z ${SERVE_MODEL:-} ]] && rm -rf "$model"
exit $rc
