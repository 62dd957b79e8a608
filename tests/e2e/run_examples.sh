#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs one of examples/ against the embedded default model (written into the work dir with the
# command of scripts/setup.sh: `v4rt init-model --preset tiny --mtp --seed 1`):
#   run_examples.sh <path/to/v4rt> <work dir> batch|chat|agent|sweep
#   batch  v4rt batch over examples/requests.jsonl: every request answered (status 200)
#   chat   examples/chat_stream.mjs (openai npm client, streaming) against `v4rt serve`
#   agent  examples/agent_tools.mjs: two turns, a tool call and its result sent back (SCRIPTED=1:
#          the random-weight model's replies are forced through the server's test hook)
#   sweep  examples/scaling_sweep.sh on 1 and 2 CPU ranks: predicted and measured points
# chat and agent exit 77 (skipped) when node or npm is not installed; an npm install that fails
# with npm present is a failure.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
WHAT=$3
fail() { echo "FAILED: $*"; exit 1; }
if [ ! -f "$WORK/tiny/model.safetensors.index.json" ]; then
  "$V4RT" init-model --preset tiny --mtp --out "$WORK/tiny" --seed 1 >/dev/null
fi

case "$WHAT" in
  batch)
    rm -f "$WORK/results.jsonl" "$WORK/results.jsonl.journal"
    "$V4RT" batch --model "$WORK/tiny" --input "$ROOT/examples/requests.jsonl" --output "$WORK/results.jsonl" \
      --progress log 2>"$WORK/batch.err" || { cat "$WORK/batch.err"; fail "v4rt batch"; }
    python3 - "$ROOT/examples/requests.jsonl" "$WORK/results.jsonl" <<'PY'
import json, sys
want = [json.loads(l)["custom_id"] for l in open(sys.argv[1]) if l.strip()]
got = {}
for line in open(sys.argv[2]):
    r = json.loads(line)
    got[r["custom_id"]] = r
assert sorted(got) == sorted(want), f"custom_ids {sorted(got)} != {sorted(want)}"
for cid, r in got.items():
    assert r["error"] is None and r["response"]["status_code"] == 200, f"{cid}: {r}"
    body = r["response"]["body"]
    assert body["usage"]["completion_tokens"] > 0, f"{cid}: no tokens"
print(f"ok - v4rt batch answered all {len(want)} requests of examples/requests.jsonl")
PY
    ;;
  chat|agent)
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      echo "SKIP: node/npm not installed"
      exit 77
    fi
    if [ ! -d "$WORK/node_modules/openai" ]; then
      npm install --prefix "$WORK" --no-audit --no-fund --silent --prefer-offline openai@4 >"$WORK/npm.log" 2>&1 ||
        { cat "$WORK/npm.log"; fail "npm install openai@4"; }
    fi
    cp "$ROOT/examples/chat_stream.mjs" "$ROOT/examples/agent_tools.mjs" "$WORK/"
    source "$HERE/serve_lib.sh"
    trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
    # A failure shows the client's error (its stderr is in $out) and the server's log.
    fail() { echo "FAILED: $*"; tail -30 "$WORK/server_$WHAT.err" 2>/dev/null; exit 1; }
    e2e_config "$WORK/examples_$WHAT.yaml"   # the tiny model, port 0, API key, test hook on
    e2e_start 1 "$WORK/examples_$WHAT.yaml" "server_$WHAT"
    if [ "$WHAT" = chat ]; then
      out=$(BASE_URL=$BASE_URL API_KEY=$API_KEY MAX_TOKENS=24 timeout 120 node "$WORK/chat_stream.mjs" "Hello!" 2>&1) ||
        fail "chat_stream.mjs: $out"
      echo "$out"
      grep -Eq '^finish_reason: (stop|length); [1-9][0-9]* text chunks; usage: \{.*"completion_tokens":[1-9]' <<<"$out" ||
        fail "no streamed text, finish reason and usage"
      echo "ok - examples/chat_stream.mjs streamed a chat completion"
    else
      out=$(BASE_URL=$BASE_URL API_KEY=$API_KEY SCRIPTED=1 timeout 120 node "$WORK/agent_tools.mjs" 2>&1) ||
        fail "agent_tools.mjs: $out"
      echo "$out"
      grep -q '^turn 1: finish_reason tool_calls' <<<"$out" || fail "turn 1 did not call the tool"
      grep -q 'calls get_weather({"city": "Lyon"}) -> {"city":"Lyon","temperature_c":14' <<<"$out" || fail "tool not run"
      grep -Eq '^turn 2: finish_reason stop, [0-9]+ prompt tokens \([1-9][0-9]* reused\)' <<<"$out" ||
        fail "turn 2 did not reuse turn 1's state"
      grep -q '^answer after 2 turn(s) and 1 tool result(s): Yes: 3.5 mm' <<<"$out" || fail "no final answer"
      echo "ok - examples/agent_tools.mjs: tool call, tool result sent back, answer"
    fi
    e2e_stop || fail "the server did not stop cleanly"
    ;;
  sweep)
    out=$(V4RT=$V4RT RANKS=1,2 CONTEXT=32 STEPS=3 TOLERANCE=100000 bash "$ROOT/examples/scaling_sweep.sh" \
          "$WORK/tiny" "$WORK/sweep" 2>&1) || fail "scaling_sweep.sh: $out"
    echo "$out" | tail -12
    [ "$(grep -c '^measured,' "$WORK/sweep/results.csv")" = 2 ] || fail "not 2 measured points in results.csv"
    grep -q '^predicted,.*,1,2,2,1,1,1,' "$WORK/sweep/results.csv" || fail "no prediction for tp 2 on 2 ranks"
    grep -q 'validation: 1 point(s), 1 PASS' <<<"$out" || fail "no validation of the 2-rank point"
    echo "ok - examples/scaling_sweep.sh measured and predicted 1 and 2 ranks"
    ;;
  *) fail "unknown example '$WHAT' (batch, chat, agent, sweep)" ;;
esac
