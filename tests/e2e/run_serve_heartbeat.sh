#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The rank heartbeat of `v4rt serve` under `mpirun -np 2` (configs/tp2.yaml layout), loopback only:
#   run_serve_heartbeat.sh <path/to/v4rt> <work dir>
# The server is idle (no request is ever sent, so no model collective runs). World rank 1 is frozen
# with SIGSTOP. /health must turn to 503 naming rank 1 within --rank-timeout (3 s; the check allows
# 1 s more for the 100 ms polling on a loaded machine), and the whole job must then end (15 s).
# Needs curl (exit 77 without it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/serve_lib.sh"
command -v curl >/dev/null || { echo "SKIP: no curl"; exit 77; }
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
[ -f "$WORK/tiny/model.safetensors.index.json" ] || "$V4RT" init-model --preset tiny --out "$WORK/tiny" >/dev/null
R1=
trap 'if [ -n "$R1" ]; then kill -CONT "$R1" 2>/dev/null || true; fi
      if [ -n "$SERVER_PID" ]; then kill -KILL $(pgrep -P "$SERVER_PID") "$SERVER_PID" 2>/dev/null || true; fi' EXIT
cd "$WORK"
RANK_TIMEOUT=3
now() { date +%s.%N; }
health() { curl -s -m 1 -w '\n%{http_code}' "$BASE_URL/health" || true; }

e2e_config "$WORK/heartbeat.yaml" "$(grep '^parallel:' "$HERE/../../configs/tp2.yaml")"
E2E_SERVE_ARGS="--rank-timeout $RANK_TIMEOUT" e2e_start 2 "$WORK/heartbeat.yaml" heartbeat
for _ in $(seq 1 600); do
  [ "$(health | tail -1)" = 200 ] && break
  sleep 0.1
done
[ "$(health | tail -1)" = 200 ] || { echo "FAILED: the server never became healthy"; tail -20 heartbeat.err; exit 1; }
sleep $((RANK_TIMEOUT + 1))  # idle longer than the deadline: the heartbeats keep every rank waiting
[ "$(health | tail -1)" = 200 ] || { echo "FAILED: /health not 200 while idle"; health; tail -20 heartbeat.err; exit 1; }
echo "ok - idle for $((RANK_TIMEOUT + 1)) s with /health 200"

R1=$(e2e_rank_pid 1)
t0=$(now)
kill -STOP "$R1"
found=
for _ in $(seq 1 150); do
  reply=$(health)
  if [ "$(echo "$reply" | tail -1)" = 503 ] && echo "$reply" | grep -q "rank 1 "; then found=1; break; fi
  sleep 0.1
done
took=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")
[ -n "$found" ] || { echo "FAILED: no 503 naming rank 1 within 15 s of SIGSTOP; last reply: $reply"; tail -20 heartbeat.err; exit 1; }
echo "/health after ${took} s: $(echo "$reply" | head -1)"
awk "BEGIN{exit !($took < $RANK_TIMEOUT + 1)}" || { echo "FAILED: ${took} s, beyond --rank-timeout $RANK_TIMEOUT"; exit 1; }
echo "ok - /health 503 naming rank 1 within --rank-timeout"

kill -CONT "$R1"
for _ in $(seq 1 150); do
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then echo "FAILED: the job is still running"; exit 1; fi
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=
[ "$rc" -ne 0 ] || { echo "FAILED: the job ended with status 0 after losing a rank"; exit 1; }
grep -q "rank 1 did not answer" heartbeat.err || { echo "FAILED: the log does not name rank 1"; tail -20 heartbeat.err; exit 1; }
echo "ok - the job ended (mpirun exit status $rc) naming rank 1"
