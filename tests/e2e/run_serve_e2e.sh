#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# End-to-end test of `v4rt serve` with the official `openai` npm client, over loopback only:
#   run_serve_e2e.sh <path/to/v4rt> <work dir>
# Writes the embedded tiny model and installs the npm package into the work dir (once), starts the
# server on a free port with the forced-output test hook on, runs tests/e2e/serve_e2e.cjs (chat,
# streaming, a tool-call round trip, reasoning, stream/non-stream identity, a 64-client load test)
# and stops the server. Exit code 77 (skipped) when the npm package cannot be installed.
set -euo pipefail
V4RT=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK"
if [ ! -f "$WORK/tiny/model.safetensors.index.json" ]; then
  "$V4RT" init-model --preset tiny --out "$WORK/tiny" >/dev/null
fi
if [ ! -d "$WORK/node_modules/openai" ]; then
  if ! npm install --prefix "$WORK" --no-audit --no-fund --silent openai@4 >"$WORK/npm.log" 2>&1; then
    echo "SKIP: npm install openai failed (see $WORK/npm.log)"
    exit 77
  fi
fi
cat >"$WORK/serve_e2e.yaml" <<YAML
model: $WORK/tiny
sampling: {temperature: 1.0, top_p: 1.0, seed: 0, max_tokens: 16}
server:
  host: 127.0.0.1
  port: 0
  api_key: e2e-key
  max_queue: 128
  max_running: 64
  max_batch_tokens: 512
  max_context: 8192
  kv_budget_mb: 2048
  request_timeout_s: 300
debug:
  test_hook_forced_output: true     # TEST HOOK: lets the tool-call test force the completion text
YAML
rm -f "$WORK/port"
"$V4RT" serve --config "$WORK/serve_e2e.yaml" --port-file "$WORK/port" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  [ -f "$WORK/port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err"; exit 1; }
  sleep 0.1
done
PORT=$(cat "$WORK/port")
cp "$HERE/serve_e2e.cjs" "$WORK/serve_e2e.cjs"
cd "$WORK"
BASE_URL="http://127.0.0.1:$PORT" API_KEY=e2e-key RESULTS="$WORK/load_results.json" timeout 540 node serve_e2e.cjs
