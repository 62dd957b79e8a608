#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The `serve` step of scripts/device/run.sh, runnable alone: `v4rt bench serve` (random token-id
# prompts, fixed input and output lengths, a sweep of concurrencies) against `v4rt serve` on the GPU,
# serving a synthetic slice of a release preset written once by `v4rt bench checkpoint` (every core)
# and removed afterwards unless SERVE_MODEL names it.
#   scripts/device/bench_serve.sh V4RT_BINARY TOKENIZER_JSON LOG [JSON_OUT]
# Environment: SERVE_BACKEND (cuda; cpu for a rehearsal), SERVE_PRESET (flash), SERVE_LAYERS (2),
# SERVE_MODEL (an existing checkpoint, or where the slice goes; default /dev/shm/v4rt-serve-<preset><layers>),
# SERVE_YAML (extra top-level YAML lines for the server, e.g. "sampling: {draw: host}"),
# SERVE_SERVER (the server: section's fields), SERVE_ARGS (`bench serve` runs, ';'-separated
# argument lists), SERVE_LABEL (the JSON lines' label). Prints each run's table; the full output goes to LOG. Exit status 1 when a run
# failed or the server did not start.
set -uo pipefail
v4rt=$1; tokenizer=$2; log=$3; json=${4:-}
preset=${SERVE_PRESET:-flash}
layers=${SERVE_LAYERS:-2}
model=${SERVE_MODEL:-/dev/shm/v4rt-serve-$preset$layers}
work=$(mktemp -d)
trap 'rm -rf "$work"; [[ -n ${pid:-} ]] && kill -9 "$pid" 2>/dev/null' EXIT
: > "$log"
rc=0
if [[ ! -f $model/config.json ]]; then
  echo "=== v4rt bench checkpoint --preset $preset --layers $layers --out $model" | tee -a "$log"
  timeout 300 "$v4rt" bench checkpoint --preset "$preset" --layers "$layers" --out "$model" >> "$log" 2>&1 || exit 1
fi
cat > "$work/serve.yaml" <<YAML
model: $model
numerics: official
server: {host: 127.0.0.1, port: 0, ${SERVE_SERVER:-max_queue: 4096, max_running: 256, max_batch_tokens: 8192}}
${SERVE_YAML:-}
YAML
"$v4rt" serve --config "$work/serve.yaml" --backend "${SERVE_BACKEND:-cuda}" --tokenizer "$tokenizer" \
  --port-file "$work/port" >> "$log" 2>&1 &
pid=$!
for _ in $(seq 1 1800); do [[ -f $work/port ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
[[ -f $work/port ]] || { echo "server did not start"; grep -vE "^[IW][0-9]{4} " "$log" | tail -20; exit 1; }
port=$(cat "$work/port")
IFS=';' read -ra runs <<< "${SERVE_ARGS:---input-len 8192 --output-len 1024 --concurrency 1,16,64 --time-limit 120}"
for args in "${runs[@]}"; do
  echo "=== v4rt bench serve $args" | tee -a "$log"
  # shellcheck disable=SC2086
  "$v4rt" bench serve --port "$port" --wait-ready 600 $args ${json:+--json-out "$json" --append} \
    --label "${SERVE_LABEL:-1xH200 $preset ${layers}-layer slice}" > "$work/out" 2>&1 || rc=1
  cat "$work/out" >> "$log"
  grep -vE "^[IWE][0-9]{4} " "$work/out" | tail -30
done
curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E "^v4rt_(steps|tokens|prefix)" | head -20 >> "$log"
kill -TERM "$pid"; wait "$pid" 2>/dev/null; pid=
[[ -z ${SERVE_MODEL:-} ]] && rm -rf "$model"
exit $rc
