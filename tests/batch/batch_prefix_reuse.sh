#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Prefix reuse in `v4rt batch`: requests whose prompts extend an earlier request's prompt resume
# from a point of the prefix tree (runtime PlanResume) instead of recomputing it, and the results
# are those of a job without the prefix cache:
#   batch_prefix_reuse.sh <path/to/v4rt> <work dir>
# --max-in-flight 1 runs the requests one after another, so each later request finds the earlier
# one's state in the cache. The summary reports the prompt tokens reused (none without the cache).
set -euo pipefail
V4RT=$(realpath "$1")
mkdir -p "$2"
WORK=$(cd "$2" && pwd)
MODEL=$WORK/tiny
[ -f "$MODEL/model.safetensors.index.json" ] || "$V4RT" init-model --preset tiny --out "$MODEL" >/dev/null
cd "$WORK"
fail() { echo "FAILED: $*"; exit 1; }

python3 - >requests.jsonl <<'PY'
import json
base = "alpha beta gamma delta batch journal resume fox river stone cloud paper"
turns = [base, base + " seven green", base + " seven green quiet north", "quiet north river"]
for i, prompt in enumerate(turns):
    print(json.dumps({"custom_id": "turn-%d" % i, "method": "POST", "url": "/v1/completions",
                      "body": {"model": "tiny", "prompt": prompt, "max_tokens": 1 if i < 2 else 6,
                               "temperature": 0}}))
PY
printf 'model: %s\nserver: {prefix_cache: false}\n' "$MODEL" >nocache.yaml
printf 'model: %s\nserver: {prefix_cache: true}\n' "$MODEL" >cache.yaml
normalize() {
  python3 -c '
import json, sys
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r["custom_id"])
for r in rows:
    b = r["response"]["body"]
    print(r["custom_id"], json.dumps(b["choices"]), json.dumps(b["usage"]))' "$1"
}
rm -f cached.jsonl* plain.jsonl*
"$V4RT" batch --config cache.yaml --input requests.jsonl --output cached.jsonl --max-in-flight 1 --progress log 2>cached.err ||
  fail "batch with the prefix cache: $(tail -3 cached.err)"
"$V4RT" batch --config nocache.yaml --input requests.jsonl --output plain.jsonl --max-in-flight 1 --progress log 2>plain.err ||
  fail "batch without the prefix cache: $(tail -3 plain.err)"
[ "$(wc -l <cached.jsonl)" = 4 ] || fail "expected 4 results, got $(wc -l <cached.jsonl)"
cmp -s <(normalize cached.jsonl) <(normalize plain.jsonl) ||
  fail "results differ with the prefix cache: $(diff <(normalize plain.jsonl) <(normalize cached.jsonl))"
reused=$(sed -n 's/^batch: prefix reuse: \([0-9]*\) prompt tokens.*/\1/p' cached.err)
[ -n "$reused" ] && [ "$reused" -gt 0 ] || fail "no prefix reuse reported: $(tail -5 cached.err)"
! grep -q "prefix reuse" plain.err || fail "prefix reuse reported without the cache"
echo "ok - 4 results equal with and without the prefix cache; $reused prompt tokens reused"
