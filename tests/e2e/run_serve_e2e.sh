#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# End-to-end test of `v4rt serve` with the official `openai` npm client, over loopback only:
#   run_serve_e2e.sh <path/to/v4rt> <work dir> [np]
# Writes the embedded tiny model and installs the npm package into the work dir (once), starts the
# server on a free port with the forced-output test hook on, runs tests/e2e/serve_e2e.cjs (chat,
# streaming, a tool-call round trip, reasoning, stream/non-stream identity of seeded requests, a
# load test) and stops the server with SIGTERM, which must end it cleanly (exit status 0).
# With np > 1 the server runs under `mpirun -np <np>` with the tensor-parallel layout of
# configs/tp<np>.yaml and a smaller load part (16 clients); before it, a one-rank server answers
# the same seeded requests, and the np-rank server must produce the same tokens.
# Exit code 77 (skipped) when the npm package cannot be installed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NP=${3:-1}
source "$HERE/serve_lib.sh"
e2e_prepare "$1" "$2"
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
cd "$WORK"

if [ "$NP" -gt 1 ]; then
  PARALLEL=$(grep '^parallel:' "$HERE/../../configs/tp$NP.yaml")
  e2e_config "$WORK/serve_e2e.yaml"
  e2e_config "$WORK/serve_e2e_np$NP.yaml" "$PARALLEL"
  # Reference: the seeded requests on one rank.
  e2e_start 1 "$WORK/serve_e2e.yaml" server_ref
  BASE_URL=$BASE_URL API_KEY=$API_KEY ONLY_SEEDED=1 SEEDED_OUT="$WORK/seeded_np1.json" timeout 120 node serve_e2e.cjs
  e2e_stop
  e2e_start "$NP" "$WORK/serve_e2e_np$NP.yaml" "server_np$NP"
  BASE_URL=$BASE_URL API_KEY=$API_KEY EXPECT_RANKS=$NP SEEDED_REF="$WORK/seeded_np1.json" \
    LOAD_CLIENTS=16 LOAD_REQUESTS=32 RESULTS="$WORK/load_results_np$NP.json" timeout 400 node serve_e2e.cjs
  TAG="server_np$NP"
else
  e2e_config "$WORK/serve_e2e.yaml"
  e2e_start 1 "$WORK/serve_e2e.yaml" server
  BASE_URL=$BASE_URL API_KEY=$API_KEY RESULTS="$WORK/load_results.json" timeout 540 node serve_e2e.cjs
  TAG=server
fi
t0=$(date +%s.%N)
if ! e2e_stop; then
  echo "FAILED: the server did not exit cleanly after SIGTERM"; tail -20 "$WORK/$TAG.err"; exit 1
fi
echo "ok - SIGTERM ended the server cleanly in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}") s"
