# SPDX-License-Identifier: MIT
# Shell helpers of the `v4rt serve` end-to-end scripts (sourced, not run):
#   e2e_prepare <v4rt> <work dir>        tiny model + `openai` npm package in the work dir (exit 77
#                                        when npm cannot install it), the .cjs scripts copied there
#   e2e_config <file> [parallel line]    a runtime YAML for the tiny model (test hook on)
#   e2e_start <np> <config> <tag>        starts the server (np > 1: under mpirun) with the extra
#                                        arguments of $E2E_SERVE_ARGS and waits until /health is
#                                        200 (the model loaded); sets SERVER_PID (the launcher),
#                                        SERVER_PORT, BASE_URL; logs in <work>/<tag>.*
#   e2e_stop                             SIGTERM to the server (under mpirun: to rank 0 alone, which
#                                        must end the whole job), waits at most 15 s, then SIGKILL;
#                                        returns the exit status
#   e2e_rank_pid <rank>                  pid of the v4rt process of that world rank (under mpirun)
E2E_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_rmaps_base_oversubscribe=1
API_KEY=e2e-key
SERVER_PID=

e2e_prepare() {
  V4RT=$(realpath "$1")
  mkdir -p "$2"
  WORK=$(cd "$2" && pwd)
  if [ ! -f "$WORK/tiny/model.safetensors.index.json" ]; then
    "$V4RT" init-model --preset tiny --out "$WORK/tiny" >/dev/null
  fi
  if [ ! -d "$WORK/node_modules/openai" ]; then
    if ! npm install --prefix "$WORK" --no-audit --no-fund --silent openai@4 >"$WORK/npm.log" 2>&1; then
      echo "SKIP: npm install openai failed (see $WORK/npm.log)"
      exit 77
    fi
  fi
  cp "$E2E_HERE"/*.cjs "$WORK/"
}

e2e_config() {
  cat >"$1" <<YAML
model: $WORK/tiny
sampling: {temperature: 1.0, top_p: 1.0, seed: 0, max_tokens: 16}
server:
  host: 127.0.0.1
  port: 0
  api_key: $API_KEY
  max_queue: ${E2E_MAX_QUEUE:-128}
  max_running: ${E2E_MAX_RUNNING:-64}
  max_batch_tokens: 512
  max_context: 8192
  kv_budget_mb: 2048
  request_timeout_s: 300
debug:
  test_hook_forced_output: true     # TEST HOOK: lets the tool-call test force the completion text
YAML
  if [ -n "${2:-}" ]; then echo "$2" >>"$1"; fi
}

e2e_start() {
  local np=$1 config=$2 tag=$3
  rm -f "$WORK/$tag.port"
  if [ "$np" -gt 1 ]; then
    # shellcheck disable=SC2086
    mpirun -np "$np" --oversubscribe "$V4RT" serve --config "$config" --port-file "$WORK/$tag.port" ${E2E_SERVE_ARGS:-} \
      >"$WORK/$tag.out" 2>"$WORK/$tag.err" &
  else
    # shellcheck disable=SC2086
    "$V4RT" serve --config "$config" --port-file "$WORK/$tag.port" ${E2E_SERVE_ARGS:-} >"$WORK/$tag.out" 2>"$WORK/$tag.err" &
  fi
  SERVER_PID=$!
  SERVER_NP=$np
  for _ in $(seq 1 600); do
    [ -f "$WORK/$tag.port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/$tag.err"; return 1; }
    sleep 0.1
  done
  [ -f "$WORK/$tag.port" ] || { echo "server did not start"; cat "$WORK/$tag.err"; return 1; }
  SERVER_PORT=$(cat "$WORK/$tag.port")
  BASE_URL="http://127.0.0.1:$SERVER_PORT"
  # The port is bound before the model loads and /health answers 503 until every rank has loaded:
  # clients start only after a 200 (a request sent earlier gets "503 the model is loading").
  for _ in $(seq 1 1200); do
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$BASE_URL/health" || true)" = 200 ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited while loading"; cat "$WORK/$tag.err"; return 1; }
    sleep 0.1
  done
  echo "server not healthy after 120 s"; tail -20 "$WORK/$tag.err"; return 1
}

e2e_stop() {
  [ -n "$SERVER_PID" ] || return 0
  local target=$SERVER_PID
  if [ "$SERVER_NP" -gt 1 ]; then target=$(e2e_rank_pid 0 || echo "$SERVER_PID"); fi
  kill -TERM "$target" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  local rc=0
  wait "$SERVER_PID" 2>/dev/null || rc=$?
  SERVER_PID=
  return $rc
}

e2e_rank_pid() {
  local p
  for p in $(pgrep -P "$SERVER_PID"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
