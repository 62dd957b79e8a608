#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Chunked prefill equals one-chunk prefill on the CPU, through every command path:
#   prefill_chunk.sh <path/to/v4rt> <work dir>
#   generate  greedy ids with --prefill-chunk 3 and with `prefill_chunk: 3` in the config equal
#             the ids with one chunk (also with --mtp 2)
#   logits    logits of every position with --prefill-chunk 3 equal one chunk (rel err <= 1e-6)
#   batch     greedy results with --prefill-chunk 3 equal one chunk
#   serve     a greedy /v1/completions answer with --prefill-chunk 3 equals one chunk (curl)
set -euo pipefail
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
MODEL=$WORK/tiny
[ -f "$MODEL/model.safetensors.index.json" ] || "$V4RT" init-model --preset tiny --mtp --out "$MODEL" >/dev/null
cd "$WORK"
fail() { echo "FAILED: $*"; exit 1; }

python3 -c 'print(" ".join(str((i * 7919 + 13) % 129000 + 100) for i in range(29)))' >ids.txt
printf 'model: %s\nprefill_chunk: 3\n' "$MODEL" >chunk3.yaml

# generate
"$V4RT" generate --model "$MODEL" --ids ids.txt --max-tokens 6 >gen_one.out 2>gen_one.err
"$V4RT" generate --model "$MODEL" --ids ids.txt --max-tokens 6 --prefill-chunk 3 >gen_flag.out 2>gen_flag.err
"$V4RT" generate --model "$MODEL" --ids ids.txt --max-tokens 6 --config chunk3.yaml >gen_cfg.out 2>gen_cfg.err
"$V4RT" generate --model "$MODEL" --ids ids.txt --max-tokens 6 --mtp 2 --prefill-chunk 3 >gen_mtp.out 2>gen_mtp.err
[ -s gen_one.out ] || fail "generate printed nothing"
for v in flag cfg mtp; do
  cmp -s <(head -1 gen_one.out) <(head -1 gen_$v.out) || fail "generate ($v): $(head -1 gen_$v.out) != $(head -1 gen_one.out)"
done
echo "ok - generate: $(head -1 gen_one.out) with one chunk, chunks of 3 (flag, config, --mtp 2)"

# logits
"$V4RT" logits --model "$MODEL" --ids ids.txt --decode-from 24 --out one.safetensors 2>/dev/null
"$V4RT" logits --model "$MODEL" --ids ids.txt --decode-from 24 --prefill-chunk 3 --out chunk3.safetensors 2>/dev/null
python3 - one.safetensors chunk3.safetensors <<'PY' || fail "logits differ"
import json, math, struct, sys
def logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        t = json.loads(f.read(n))["logits"]
        f.seek(8 + n + t["data_offsets"][0])
        count = t["shape"][0] * t["shape"][1]
        return struct.unpack("<%df" % count, f.read(4 * count))
a, b = logits(sys.argv[1]), logits(sys.argv[2])
assert len(a) == len(b), "shapes differ"
err = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)) / sum(x * x for x in a))
print("ok - logits: chunks of 3 vs one chunk, rel err %.3e (tol 1e-6)" % err)
sys.exit(0 if err <= 1e-6 else 1)
PY

# batch
python3 - >requests.jsonl <<'PY'
import json
words = "alpha beta gamma delta batch journal resume fox river stone cloud paper seven green quiet north".split()
for i in range(4):
    prompt = " ".join(words[(i * 5 + k) % 16] for k in range(6 + 3 * i))
    print(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/completions",
                      "body": {"model": "tiny", "prompt": prompt, "max_tokens": 5, "temperature": 0}}))
PY
normalize() {  # the generated text and usage of every result, by custom_id
  python3 -c '
import json, sys
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r["custom_id"])
for r in rows:
    b = r["response"]["body"]
    print(r["custom_id"], json.dumps(b["choices"]), json.dumps(b["usage"]))' "$1"
}
rm -f b_one.jsonl* b_chunk.jsonl*
"$V4RT" batch --model "$MODEL" --input requests.jsonl --output b_one.jsonl --progress log 2>b_one.err
"$V4RT" batch --model "$MODEL" --input requests.jsonl --output b_chunk.jsonl --prefill-chunk 3 --progress log 2>b_chunk.err
cmp -s <(normalize b_one.jsonl) <(normalize b_chunk.jsonl) || fail "batch results differ: $(diff <(normalize b_one.jsonl) <(normalize b_chunk.jsonl))"
echo "ok - batch: $(wc -l <b_one.jsonl) results equal with chunks of 3"

# serve
serve_answer() {  # $1 tag, then extra serve arguments
  local tag=$1; shift
  rm -f "$tag.port"
  "$V4RT" serve --model "$MODEL" --port 0 --port-file "$tag.port" "$@" >"$tag.out" 2>"$tag.err" &
  local pid=$!
  for _ in $(seq 1 600); do [ -f "$tag.port" ] && break; sleep 0.1; done
  [ -f "$tag.port" ] || { kill -KILL $pid; fail "serve ($tag) did not start"; }
  local url="http://127.0.0.1:$(cat "$tag.port")"
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health" || true)" = 200 ] && break
    sleep 0.1
  done
  curl -s -m 120 "$url/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "prompt": "alpha beta gamma delta batch journal resume fox river stone", "max_tokens": 6, "temperature": 0}' |
    python3 -c 'import json, sys; b = json.load(sys.stdin); print(json.dumps(b["choices"][0]["text"]), b["usage"]["completion_tokens"])' >"$tag.answer"
  kill -TERM $pid
  wait $pid || fail "serve ($tag) did not exit cleanly"
}
serve_answer s_one
serve_answer s_chunk --prefill-chunk 3
[ -s s_one.answer ] || fail "serve gave no answer"
cmp -s s_one.answer s_chunk.answer || fail "serve answers differ: $(cat s_one.answer) vs $(cat s_chunk.answer)"
echo "ok - serve: $(cat s_one.answer) with one chunk and chunks of 3"
