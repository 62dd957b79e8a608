#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The 1,000-request batch run reported in docs/PERFORMANCE.md ("Batch"); too long for CI (the
# 100-request version is test_batch_throughput). Writes the tiny model, 1,000 requests (alternating
# chat and completions, short prompts, max_tokens 4) and runs them under `mpirun -np NP` (default
# 2, tensor parallel) or on one rank with NP=1.
# Usage: tests/batch/run_batch_1000.sh <v4rt binary> <work dir> [NP]
set -euo pipefail
V4RT=${1:?v4rt binary}
WORK=${2:?work dir}
NP=${3:-2}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$WORK"
[ -f "$WORK/tiny/model.safetensors.index.json" ] || "$V4RT" init-model --preset tiny --out "$WORK/tiny" --seed 1
python3 - "$WORK/requests.jsonl" <<'PY'
import json, random, sys
random.seed(1000)
words = "alpha beta gamma delta batch journal resume fox river stone cloud paper seven green quiet north".split()
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        prompt = " ".join(random.choice(words) for _ in range(2 + i % 5))
        if i % 2 == 0:
            body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                    "thinking": {"type": "disabled"}}
            url = "/v1/chat/completions"
        else:
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 4}
            url = "/v1/completions"
        f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}) + "\n")
PY
rm -f "$WORK/results.jsonl" "$WORK/results.jsonl.journal"
ARGS=(batch --model "$WORK/tiny" --tokenizer "$SRC/data/tokenizer/tokenizer.json" --input "$WORK/requests.jsonl"
      --output "$WORK/results.jsonl" --seed 1 --progress log --log-interval 30)
if [ "$NP" -gt 1 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
  time mpirun -np "$NP" --oversubscribe "$V4RT" "${ARGS[@]}" --config "$SRC/configs/tp$NP.yaml"
else
  time "$V4RT" "${ARGS[@]}"
fi
echo "lines: $(wc -l < "$WORK/results.jsonl")"
