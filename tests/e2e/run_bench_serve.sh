#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `v4rt bench serve` against `v4rt serve` on the tiny model (one rank, loopback), small lengths:
#   run_bench_serve.sh <path/to/v4rt> <work dir>
#   stream     streaming, concurrency 1,4: every request completes, the counts add up (completed +
#              failed + not_sent = num_prompts, output tokens = completed x output_len, input
#              tokens = completed x input_len), TTFT / TPOT / ITL measured for every request
#   no-stream  the same without streaming: no TTFT / TPOT, end-to-end latency for every request
#   limit      a level of far more work than its --time-limit: it ends at the limit, requests in
#              flight are counted as failed, the rest as not sent, nothing is lost
#   kill       the server is SIGKILLed while requests run: the run ends by itself (before its time
#              limit), the failures are counted with their reason, the counts still add up
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/serve_lib.sh"
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
trap 'e2e_stop >/dev/null 2>&1 || true' EXIT
if [ ! -f "$WORK/tiny/model.safetensors.index.json" ]; then
  "$V4RT" init-model --preset tiny --out "$WORK/tiny" >/dev/null
fi
E2E_MAX_RUNNING=8 e2e_config "$WORK/bench.yaml"
IN=16 OUT=8

# check <jsonl> <levels> <stream 0|1>: the counts of every line of a run where nothing failed.
check_complete() {
  python3 - "$1" "$2" "$3" "$IN" "$OUT" <<'PY'
import json, sys
path, levels, stream, inp, out = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
lines = [json.loads(l) for l in open(path)]
assert [l["concurrency"] for l in lines] == levels, f"levels {[l['concurrency'] for l in lines]} != {levels}"
for l in lines:
    n, c = l["num_prompts"], l["completed"]
    assert l["completed"] + l["failed"] + l["not_sent"] == n, l
    assert l["failed"] == 0 and l["not_sent"] == 0 and c == n and not l["errors"], l
    assert l["total_output_tokens"] == c * out and l["output_len_mismatch"] == 0, l
    assert l["total_input_tokens"] == c * inp, l
    assert l["stream"] == stream and l["input_len"] == inp and l["output_len"] == out, l
    assert l["e2el_count"] == c and l["output_tok_s"] > 0 and l["request_throughput"] > 0, l
    assert abs(l["total_tok_s"] - l["input_tok_s"] - l["output_tok_s"]) < 1e-6 * l["total_tok_s"], l
    assert abs(l["total_tok_s_per_gpu"] * l["gpus"] - l["total_tok_s"]) < 1e-6 * l["total_tok_s"], l
    if stream:
        assert l["ttft_count"] == c and l["tpot_count"] == c and l["itl_count"] >= 1, l
        assert l["ttft_p50_ms"] <= l["ttft_p99_ms"] and l["tpot_p50_ms"] > 0, l
    else:
        assert l["ttft_count"] == 0 and l["ttft_p50_ms"] is None and l["tpot_p50_ms"] is None, l
    print(f"ok - concurrency {l['concurrency']}: {c}/{n} completed, {l['total_output_tokens']} output tokens, "
          f"{l['output_tok_s']:.1f} output tok/s")
PY
}

e2e_start 1 "$WORK/bench.yaml" bench_server
BENCH=("$V4RT" bench serve --url "$BASE_URL" --api-key "$API_KEY" --input-len $IN --seed 1 --wait-ready 300)

echo "== stream"
timeout 300 "${BENCH[@]}" --output-len $OUT --concurrency 1,4 --num-prompts 6 --time-limit 120 --json-out "$WORK/stream.jsonl" | tee "$WORK/stream.out"
check_complete "$WORK/stream.jsonl" 1,4 1
grep -q "TTFT p50/p99" "$WORK/stream.out"
if command -v gnuplot >/dev/null; then  # the JSON lines plot as throughput against latency
  python3 "$HERE/../../scripts/scaling/plot_serve.py" "$WORK/stream.jsonl" --out "$WORK/serve.svg"
  grep -q "<svg" "$WORK/serve.svg"
fi

echo "== no-stream"
timeout 300 "${BENCH[@]}" --output-len $OUT --no-stream --concurrency 1,4 --num-prompts 6 --time-limit 120 --json-out "$WORK/nostream.jsonl"
check_complete "$WORK/nostream.jsonl" 1,4 0

echo "== limit"
timeout 120 "${BENCH[@]}" --output-len 512 --concurrency 2 --num-prompts 2000 --time-limit 2 --warmup 0 \
  --json-out "$WORK/limit.jsonl"
python3 - "$WORK/limit.jsonl" <<'PY'
import json, sys
(l,) = [json.loads(x) for x in open(sys.argv[1])]
assert l["time_limit_hit"] and l["num_prompts"] == 2000, l
assert l["completed"] + l["failed"] + l["not_sent"] == 2000, l
assert l["not_sent"] > 0 and l["failed"] >= 1, l
assert set(l["errors"]) == {"cut at the time limit"}, l
print(f"ok - time limit: {l['completed']} completed, {l['failed']} cut, {l['not_sent']} not sent")
PY
# The server is still healthy after the cut requests.
curl -sf "$BASE_URL/health" >/dev/null

echo "== kill"
"${BENCH[@]}" --output-len 64 --concurrency 4 --num-prompts 400 --time-limit 200 --json-out "$WORK/kill.jsonl" \
  >"$WORK/kill.out" 2>&1 &
CLIENT=$!
running=0
for _ in $(seq 1 600); do
  kill -0 "$CLIENT" 2>/dev/null || break
  running=$(curl -sf -H "Authorization: Bearer $API_KEY" "$BASE_URL/metrics" | awk '$1=="v4rt_running_sequences"{print int($2)}' || true)
  [ "${running:-0}" -ge 2 ] && break
  sleep 0.1
done
[ "${running:-0}" -ge 2 ] || { echo "FAILED: the benchmark never had requests running"; cat "$WORK/kill.out"; exit 1; }
t0=$(date +%s)
kill -KILL "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
rc=0
for _ in $(seq 1 600); do kill -0 "$CLIENT" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$CLIENT" 2>/dev/null; then kill -KILL "$CLIENT"; echo "FAILED: the benchmark still runs 60 s after the server died"; exit 1; fi
wait "$CLIENT" || rc=$?
cat "$WORK/kill.out"
[ "$rc" = 0 ] || { echo "FAILED: bench serve exited with status $rc"; exit 1; }
echo "bench ended $(( $(date +%s) - t0 )) s after the server was killed"
python3 - "$WORK/kill.jsonl" <<'PY'
import json, sys
(l,) = [json.loads(x) for x in open(sys.argv[1])]
assert not l["time_limit_hit"], l
assert l["completed"] + l["failed"] + l["not_sent"] == 400 and l["not_sent"] == 0, l
assert l["failed"] >= 1 and sum(l["errors"].values()) == l["failed"], l
assert l["total_output_tokens"] == l["completed"] * 64, l
print(f"ok - server killed: {l['completed']} completed, {l['failed']} failed by reason {l['errors']}")
PY
grep -q "failed .* x " "$WORK/kill.out"
echo "bench serve e2e: all phases passed"
