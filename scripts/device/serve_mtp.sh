#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `v4rt serve` on the GPU with and without speculative decoding: the same greedy completions
# (concurrent clients, /v1/completions) against a server without drafting and one with --mtp N,
# on a checkpoint with an MTP block. Prints per server the wall time, generated tokens per second,
# whether the texts are identical, and the speculative counters of /metrics.
#   scripts/device/serve_mtp.sh V4RT_BINARY MODEL_DIR TOKENIZER_JSON LOG
# Environment: SERVE_BACKEND (cuda; cpu for a rehearsal), SERVE_NUMERICS (official), SERVE_DEPTH (2),
# SERVE_CLIENTS (8), SERVE_TOKENS (32 per request), SERVE_TEMPERATURE (0; sampled requests carry
# seeds 1..clients), SERVE_DEPTHS (the servers to run, default "0 $SERVE_DEPTH"), SERVE_KEEP (a
# folder that keeps texts_<depth>.json, e.g. to compare two builds).
set -uo pipefail
v4rt=$1; model=$2; tokenizer=$3; log=$4
work=$(mktemp -d)
trap 'rm -rf "$work"; [[ -n ${pid:-} ]] && kill -9 "$pid" 2>/dev/null' EXIT
: > "$log"
cat > "$work/serve.yaml" <<YAML
model: $model
numerics: ${SERVE_NUMERICS:-official}
server: {host: 127.0.0.1, port: 0, max_queue: 64, max_running: 16, max_batch_tokens: 256, kv_budget_mb: 8192}
YAML
rc=0
for mtp in ${SERVE_DEPTHS:-0 ${SERVE_DEPTH:-2}}; do
  rm -f "$work/port"
  "$v4rt" serve --config "$work/serve.yaml" --backend "${SERVE_BACKEND:-cuda}" --tokenizer "$tokenizer" \
    --port-file "$work/port" --mtp "$mtp" >> "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do [[ -f $work/port ]] && break; sleep 0.1; done
  [[ -f $work/port ]] || { echo "server (--mtp $mtp) did not start"; tail -20 "$log"; exit 1; }
  python3 - "$(cat "$work/port")" "$mtp" "$work/texts_$mtp.json" "${SERVE_CLIENTS:-8}" "${SERVE_TOKENS:-32}" "${SERVE_TEMPERATURE:-0}" <<'PY' || rc=1
import json, sys, time, urllib.request, concurrent.futures as cf
port, mtp, out, clients, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
temperature = float(sys.argv[6])
base = f"http://127.0.0.1:{port}"
for _ in range(3000):
    try:
        if json.load(urllib.request.urlopen(base + "/health")).get("status") == "ok": break
    except Exception: pass
    time.sleep(0.1)
name = json.load(urllib.request.urlopen(base + "/v1/models"))["data"][0]["id"]
def complete(i):
    body = json.dumps({"model": name, "prompt": f"Request {i}: write about the number {i * 7}.", "max_tokens": tokens,
                       "temperature": temperature, "seed": i}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    r = json.load(urllib.request.urlopen(req, timeout=600))
    return r["choices"][0]["text"], r["usage"]["completion_tokens"]
complete(0)  # warm-up
t0 = time.time()
with cf.ThreadPoolExecutor(clients) as ex: res = list(ex.map(complete, range(1, clients + 1)))
wall = time.time() - t0
n = sum(c for _, c in res)
json.dump([t for t, _ in res], open(out, "w"))
m = {}
for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
    if line.startswith("v4rt_spec_"): k, v = line.split(" "); m[k] = float(v)
print(f"--mtp {mtp}, temperature {temperature}: {clients} clients x {tokens} tokens: {n} tokens in {wall:.2f} s = {n / wall:.1f} tok/s")
if mtp: print("  /metrics: " + ", ".join(f"{k[10:]} {v:g}" for k, v in m.items()))
PY
  kill -TERM "$pid"; wait "$pid" 2>/dev/null; pid=
  [[ -n ${SERVE_KEEP:-} ]] && mkdir -p "$SERVE_KEEP" && cp "$work/texts_$mtp.json" "$SERVE_KEEP/"
done
[[ -f $work/texts_0.json && -f $work/texts_${SERVE_DEPTH:-2}.json ]] || exit $rc
if cmp -s "$work/texts_0.json" "$work/texts_${SERVE_DEPTH:-2}.json"; then
  echo "greedy texts identical with and without --mtp ${SERVE_DEPTH:-2}"
else
  echo "greedy texts DIFFER with --mtp ${SERVE_DEPTH:-2}:"; python3 -c "
import json,sys; a=json.load(open('$work/texts_0.json')); b=json.load(open('$work/texts_${SERVE_DEPTH:-2}.json'))
print(sum(x == y for x, y in zip(a, b)), 'of', len(a), 'equal')"
fi
exit $rc
