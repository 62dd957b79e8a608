#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Rank failures of `v4rt serve` under `mpirun -np 2` (configs/tp2.yaml layout), loopback only:
#   run_serve_fault.sh <path/to/v4rt> <work dir> [phases]  phases: kill stop term0 term (default all)
#   kill  a follower is SIGKILLed while requests stream: every request in flight gets a 503 and the
#         whole job (mpirun and both ranks) is gone within 10 s
#   stop  a follower is SIGSTOPped (a stuck rank): the leader's collective deadline (--rank-timeout,
#         default 5 s) fires; every request gets a 503; the job is gone within 10 s
#   term0 SIGTERM to rank 0 while requests stream: every request gets a 503, the followers leave on
#         the shutdown plan and the job ends cleanly (mpirun exit status 0) within 10 s
#   term  SIGTERM to mpirun (which signals every rank): the job ends within 10 s, no rank left
# Exit code 77 (skipped) when the npm package cannot be installed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/serve_lib.sh"
e2e_prepare "$1" "$2"
PHASES=${3:-kill stop term0 term}
trap 'if [ -n "$SERVER_PID" ]; then kill -KILL $(pgrep -P "$SERVER_PID") "$SERVER_PID" 2>/dev/null || true; fi' EXIT
cd "$WORK"
e2e_config "$WORK/fault.yaml" "$(grep '^parallel:' "$HERE/../../configs/tp2.yaml")"
now() { date +%s.%N; }
elapsed() { awk "BEGIN{printf \"%.2f\", $(now) - $1}"; }

# Waits up to 15 s for the job to end; prints the seconds since $1; fails past 10 s or if a rank
# process is left.
wait_job_gone() {
  local t0=$1 pids=$2 rc=0
  for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then echo "FAILED: mpirun still running $(elapsed "$t0") s after the fault"; return 1; fi
  wait "$SERVER_PID" 2>/dev/null || rc=$?
  JOB_RC=$rc
  SERVER_PID=
  local p alive
  for _ in $(seq 1 50); do  # the ranks mpirun killed last may take a moment to go
    alive=
    for p in $pids; do
      if kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != Z ]; then alive="$alive $p"; fi
    done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  local took
  took=$(elapsed "$t0")
  if [ -n "$alive" ]; then echo "FAILED: rank process(es)$alive still alive ${took} s after the fault"; return 1; fi
  echo "job ended ${took} s after the fault (mpirun exit status $rc)"
  awk "BEGIN{exit !($took < 10)}" || { echo "FAILED: the job took ${took} s (limit 10 s)"; return 1; }
  echo "ok - job gone within 10 s"
}

for phase in $PHASES; do
  echo "== phase $phase"
  e2e_start 2 "$WORK/fault.yaml" "fault_$phase"
  R0=$(e2e_rank_pid 0); R1=$(e2e_rank_pid 1)
  if [ "$phase" = term ]; then
    BASE_URL=$BASE_URL node -e "require('./serve_util.cjs').waitHealthy(process.env.BASE_URL).then(()=>process.exit(0),()=>process.exit(1))"
    t0=$(now)
    kill -TERM "$SERVER_PID"
    wait_job_gone "$t0" "$R0 $R1"
    continue
  fi
  rm -f "$WORK/fault_ready"
  BASE_URL=$BASE_URL API_KEY=$API_KEY READY_FILE="$WORK/fault_ready" timeout 180 node serve_fault.cjs &
  CLIENT=$!
  for _ in $(seq 1 1800); do
    [ -f "$WORK/fault_ready" ] && break
    kill -0 "$CLIENT" 2>/dev/null || break
    sleep 0.1
  done
  [ -f "$WORK/fault_ready" ] || { echo "FAILED: clients never streamed"; wait "$CLIENT" || true; exit 1; }
  t0=$(now)
  case $phase in
    kill) kill -KILL "$R1" ;;
    stop) kill -STOP "$R1" ;;
    term0) kill -TERM "$R0" ;;
  esac
  wait_job_gone "$t0" "$R0 $R1"
  if [ "$phase" = term0 ]; then
    [ "$JOB_RC" = 0 ] || { echo "FAILED: SIGTERM to rank 0 ended the job with status $JOB_RC"; exit 1; }
    echo "ok - SIGTERM to rank 0 ended the job cleanly (status 0)"
  fi
  wait "$CLIENT"
  grep -h "aborting\|timed out\|noticed" "$WORK/fault_$phase.err" | head -3 || true
done
echo "fault tests: all phases passed ($PHASES)"
