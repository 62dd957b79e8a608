#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The `mpijobs` step of scripts/device/run.sh, runnable alone: `v4rt serve` and `v4rt batch` under
# `mpirun` with the CUDA backend, end to end, for a list of layouts. On a one-GPU machine the ranks
# share the GPU through the staged Comm (docs/COMM.md). Per layout:
#   serve  the server under mpirun (scripts/device/bench_serve.sh with SERVE_NP / SERVE_PARALLEL)
#          and a short `v4rt bench serve`: every level must complete all its prompts (completed ==
#          num_prompts, failed == 0, not_sent == 0) on a server reporting the layout's rank count,
#          and the server must stop cleanly with no rank left behind;
#   batch  `mpirun -np N v4rt batch` over a small JSONL of greedy requests (temperature 0,
#          ignore_eos, logprobs for the token lists): exit status 0 and one line per request with
#          status 200 and no error; then its outputs against a 1-rank `v4rt batch` of the same file.
#          Layouts sum in other orders (docs/BATCH.md "Determinism"), so equality is reported (texts
#          equal, tokens equal before the first difference), not required (MPI_REQUIRE_EQUAL=1 does).
# The model: a synthetic slice of a release preset, written once by `v4rt bench checkpoint` and
# removed at the end unless MPI_MODEL names it.
#   scripts/device/mpi_jobs.sh V4RT_BINARY TOKENIZER_JSON OUT_DIR
# Environment:
#   MPI_BACKEND   cuda (cpu: a rehearsal on CPU ranks)
#   MPI_PRESET, MPI_LAYERS, MPI_MODEL   the slice (flash, 2; default /dev/shm/v4rt-mpi-<preset><layers>)
#   MPI_NUMERICS  official (reference for tiny with TP layouts: its TP slices would cut FP8 blocks)
#   MPI_LAYOUTS   space-separated, each NAME (the `parallel:` line of configs/NAME.yaml; ranks =
#                 dp*sp*tp) or NAME=tp,sp,ep,dp; default "ep2 tp2 sp2 ep4_tp2 tp2_sp2" (all valid
#                 for Flash: 64 heads, 8 output groups, 64 indexer heads, 256 experts)
#   MPI_STEPS     "serve batch" (either alone to skip the other)
#   MPI_SERVE_ARGS  `bench serve` arguments (default: input 512, output 32, concurrency 1,4, 8
#                 prompts per level, 60 s per level, --gpus 1: the ranks share one GPU)
#   MPI_RANK_TIMEOUT  the server's --rank-timeout (30; its default of 5 s is meant for ranks on
#                 GPUs of their own, and here up to 4 ranks time-share one GPU)
#   MPI_REQUESTS, MPI_TOKENS, MPI_PROMPT_WORDS  the batch file: requests (8), max_tokens (16), words
#                 of the longest prompt (600; prompts grow from 40 words, so SP splits the KV)
#   MPI_JOB_TIMEOUT  seconds one batch job or one serve run may take (300)
#   MPI_REQUIRE_EQUAL  1: a greedy output other than the 1-rank one fails the layout
# Logs under OUT_DIR: serve_<layout>.log / .jsonl, batch_<layout>.log / .jsonl, batch_ref.*,
# requests.jsonl. Prints one summary block per layout as it finishes (so a run cut short still
# shows the layouts done) and a last line; exit status 1 when a layout failed.
set -uo pipefail
v4rt=$(realpath "$1"); tokenizer=$(realpath "$2"); out=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/device/job_lib.sh
source "$here/job_lib.sh"
mkdir -p "$out"
out=$(cd "$out" && pwd)
backend=${MPI_BACKEND:-cuda}
preset=${MPI_PRESET:-flash}
layers=${MPI_LAYERS:-2}
numerics=${MPI_NUMERICS:-official}
model=${MPI_MODEL:-/dev/shm/v4rt-mpi-$preset$layers}
steps=${MPI_STEPS:-serve batch}
job_timeout=${MPI_JOB_TIMEOUT:-300}
serve_args=${MPI_SERVE_ARGS:---input-len 512 --output-len 32 --concurrency 1,4 --num-prompts 8 --time-limit 60 --gpus 1}
want() { [[ " $steps " == *" $1 "* ]]; }
# On any exit (a TERM from an outer `timeout` included): no job left running, no slice left in /dev/shm.
trap 'job_end 5 >/dev/null 2>&1; [[ -n ${MPI_MODEL:-} ]] || rm -rf "$model"' EXIT
trap 'exit 143' TERM INT
t_all=$SECONDS

if [[ ! -f $model/config.json ]]; then
  t0=$SECONDS
  timeout 300 "$v4rt" bench checkpoint --preset "$preset" --layers "$layers" --out "$model" > "$out/checkpoint.log" 2>&1 \
    || { echo "mpijobs: bench checkpoint failed:"; tail -5 "$out/checkpoint.log"; exit 1; }
  echo "mpijobs: $preset $layers-layer slice -> $model in $((SECONDS - t0)) s"
fi

# --- the batch file ------------------------------------------------------------------------------
python3 - "$out/requests.jsonl" "${MPI_REQUESTS:-8}" "${MPI_TOKENS:-16}" "${MPI_PROMPT_WORDS:-600}" <<'PY'
import json, sys
path, n, tokens, longest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
with open(path, "w") as f:
    for i in range(n):
        count = 40 + (longest - 40) * i // max(1, n - 1)
        text = f"Request {i}: " + " ".join(words[(i + k) % len(words)] for k in range(count))
        common = {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        if i % 4 == 3:  # every fourth a chat request
            body = {"messages": [{"role": "user", "content": text}], "logprobs": True, **common}
            url = "/v1/chat/completions"
        else:
            body = {"prompt": text, "logprobs": 0, **common}
            url = "/v1/completions"
        f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + "\n")
PY

# check_batch INPUT OUTPUT [REFERENCE]: one line of findings; exit status 1 on a missing, duplicate
# or failed request (or, with MPI_REQUIRE_EQUAL=1, an output other than the reference's).
check_batch() {
  python3 - "$@" <<'PY'
import json, os, sys
def load(path):
    rows, dup = {}, 0
    if not os.path.exists(path):
        return rows, dup
    for line in open(path):
        if line.strip():
            j = json.loads(line)
            dup += j.get("custom_id") in rows
            rows[j.get("custom_id")] = j
    return rows, dup
def result(j):  # (text, tokens, completion_tokens) of a 200 line, else None
    if j.get("error") is not None or not j.get("response") or j["response"].get("status_code") != 200:
        return None
    b = j["response"]["body"]
    c = b["choices"][0]
    if "message" in c:
        m = c["message"]
        text = json.dumps({k: m.get(k) for k in ("content", "reasoning_content", "tool_calls")}, sort_keys=True)
        toks = [e["token"] for e in ((c.get("logprobs") or {}).get("content") or [])]
    else:
        text = c["text"]
        toks = list((c.get("logprobs") or {}).get("tokens") or [])
    return text, toks, b.get("usage", {}).get("completion_tokens")
reqs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
got, dup = load(sys.argv[2])
ref = load(sys.argv[3])[0] if len(sys.argv) > 3 else None
ok = missing = errors = short = 0
first_error = ""
texts = tok_eq = tok_all = 0
for r in reqs:
    j = got.get(r["custom_id"])
    if j is None:
        missing += 1
        continue
    g = result(j)
    if g is None:
        errors += 1
        first_error = first_error or f"{r['custom_id']}: {json.dumps(j.get('error') or j.get('response'))[:160]}"
        continue
    ok += 1
    short += g[2] != r["body"]["max_tokens"]
    if ref is not None and r["custom_id"] in ref and (e := result(ref[r["custom_id"]])) is not None:
        texts += g[0] == e[0]
        n = 0
        while n < min(len(g[1]), len(e[1])) and g[1][n] == e[1][n]:
            n += 1
        tok_eq += n
        tok_all += len(e[1])
line = f"{ok}/{len(reqs)} ok"
if missing or errors or dup or len(got) != len(reqs):
    line += f", {missing} missing, {errors} errors, {dup} duplicates, {len(got)} output lines"
if short:
    line += f", {short} with other than max_tokens tokens"
if ref is not None and ok:
    line += f"; greedy vs 1 rank: texts {texts}/{ok} equal, tokens {tok_eq}/{tok_all} equal before the first difference"
print(line + (f"; first error {first_error}" if first_error else ""))
bad = missing or errors or dup or len(got) != len(reqs)
if ref is not None and os.environ.get("MPI_REQUIRE_EQUAL") == "1" and (texts != ok or tok_eq != tok_all):
    bad = True
sys.exit(1 if bad else 0)
PY
}

# why FILE...: the lines of logs that say why a job failed (no repeats), at most 4, each at most 240 characters.
why() {
  grep -hE "start-up failed|^[EF][0-9]{4} |Check failed|did not (start|stop)|left behind|failed [0-9]+ x|stopped:|error" "$@" \
    2>/dev/null | grep -vE "help message|orte_base_help_aggregate|errorcode" | awk '!seen[$0]++' | head -4 |
    cut -c1-240 | sed 's/^/    /'
}

# run_batch TAG NP PARALLEL: `v4rt batch` (under mpirun when NP > 1) over requests.jsonl into
# batch_TAG.jsonl; its exit status (124: past MPI_JOB_TIMEOUT, then killed).
run_batch() {
  local tag=$1 np=$2 parallel=$3 st
  rm -f "$out/batch_$tag.jsonl" "$out/batch_$tag.jsonl.journal"
  {
    echo "model: $model"
    echo "numerics: $numerics"
    echo "server: {max_queue: 256, max_running: 16, max_batch_tokens: 2048, kv_budget_mb: 4096}"
    [[ -n $parallel ]] && echo "parallel: $parallel"
  } > "$out/batch_$tag.yaml"
  local cmd=("$v4rt" batch --config "$out/batch_$tag.yaml" --input "$out/requests.jsonl" --output "$out/batch_$tag.jsonl"
    --ordered --backend "$backend" --tokenizer "$tokenizer" --progress log --log-interval 5)
  : > "$out/batch_$tag.log"
  if ((np > 1)); then
    job_start "$out/batch_$tag.log" mpirun -np "$np" --oversubscribe ${LD_LIBRARY_PATH:+-x LD_LIBRARY_PATH} \
      -x NCCL_NVLS_ENABLE=0 "${cmd[@]}"
  else
    job_start "$out/batch_$tag.log" "${cmd[@]}"
  fi
  job_wait "$job_timeout"
  st=$?
  if ((st == 124)); then job_end 10; else job_reap; fi
  if [[ -n $JOB_LEFT ]]; then
    echo "processes left behind (killed):$JOB_LEFT" >> "$out/batch_$tag.log"
    ((st == 0)) && st=1
  fi
  return $st
}

# --- the 1-rank reference ------------------------------------------------------------------------
rc=0
ref_ok=0
if want batch; then
  t0=$SECONDS
  run_batch ref 1 ""
  st=$?
  line=$(check_batch "$out/requests.jsonl" "$out/batch_ref.jsonl" 2>&1)
  st2=$?
  if ((st == 0 && st2 == 0)); then
    ref_ok=1
    echo "mpijobs: 1-rank batch: $line ($((SECONDS - t0)) s)"
  else
    rc=1
    echo "mpijobs: 1-rank batch FAILED (exit status $st): $line"
    why "$out/batch_ref.log"
  fi
fi

# --- the layouts ---------------------------------------------------------------------------------
# size KEY: that size of $parallel (1 when absent).
size() { if [[ $parallel =~ (^|[{ ,])$1:\ *([0-9]+) ]]; then echo "${BASH_REMATCH[2]}"; else echo 1; fi; }
passed=0
total=0
for spec in ${MPI_LAYOUTS:-ep2 tp2 sp2 ep4_tp2 tp2_sp2}; do
  total=$((total + 1))
  name=${spec%%=*}
  if [[ $spec == *=* ]]; then
    IFS=, read -r tp sp ep dp <<< "${spec#*=}"
    parallel="{tp: $tp, sp: $sp, ep: $ep, dp: $dp}"
  else
    parallel=$(sed -n 's/^parallel: *//p' "$root/configs/$name.yaml" 2>/dev/null | head -1)
  fi
  np=$(($(size tp) * $(size sp) * $(size dp)))
  if [[ -z $parallel ]]; then
    echo "$name: FAILED: no configs/$name.yaml with a parallel: line"
    rc=1
    continue
  fi
  t0=$SECONDS
  ok=1
  echo "$name (np $np, parallel $parallel):"
  if want serve; then
    rm -f "$out/serve_$name.jsonl.tmp"  # bench serve appends
    SERVE_BACKEND=$backend SERVE_MODEL=$model SERVE_NUMERICS=$numerics SERVE_NP=$np SERVE_PARALLEL=$parallel \
      SERVE_SERVER="max_queue: 256, max_running: 16, max_batch_tokens: 2048, kv_budget_mb: 4096" \
      SERVE_ARGS=$serve_args \
      SERVE_LABEL="$name np$np $backend" SERVE_READY_S=$job_timeout SERVE_YAML="" \
      SERVE_FLAGS="--rank-timeout ${MPI_RANK_TIMEOUT:-30}" \
      timeout -k 20 "$((job_timeout + 120))" bash "$here/bench_serve.sh" "$v4rt" "$tokenizer" "$out/serve_$name.log" \
      "$out/serve_$name.jsonl.tmp" > "$out/serve_$name.out" 2>&1
    st=$?
    mv -f "$out/serve_$name.jsonl.tmp" "$out/serve_$name.jsonl" 2>/dev/null || : > "$out/serve_$name.jsonl"
    line=$(python3 - "$out/serve_$name.jsonl" "$np" "$serve_args" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
np_, levels = int(sys.argv[2]), 0
for run in sys.argv[3].split(";"):  # the levels expected: one per concurrency of every run
    args = run.split()
    levels += len(args[args.index("--concurrency") + 1].split(",")) if "--concurrency" in args else 1
bad = len(rows) != levels
parts = []
for r in rows:
    good = r["completed"] == r["num_prompts"] and r["failed"] == 0 and r["not_sent"] == 0 and r["ranks"] == np_
    bad |= not good
    p = (f"c{r['concurrency']} {r['completed']}/{r['num_prompts']}" + ("" if good else f" FAILED (failed {r['failed']},"
         f" not sent {r['not_sent']}, ranks {r['ranks']}, errors {r['errors']})"))
    if r["completed"]:
        p += f" {r['output_tok_s']:.0f} out tok/s, TPOT p50 {r.get('tpot_p50_ms') or float('nan'):.1f} ms"
    parts.append(p)
if len(rows) != levels:
    parts.append(f"{len(rows)} of {levels} levels reported")
print("; ".join(parts))
sys.exit(1 if bad else 0)
PY
)
    st2=$?
    ready=$(sed -n 's/^server ready: np [0-9]*, \([0-9]*\) s$/\1/p' "$out/serve_$name.log" | head -1)
    if ((st == 0 && st2 == 0)); then
      echo "  serve ok: $line (ready in ${ready:-?} s)"
    else
      ok=0
      echo "  serve FAILED (exit status $st): $line"
      why "$out/serve_$name.out" "$out/serve_$name.log"
    fi
  fi
  if want batch; then
    run_batch "$name" "$np" "$parallel"
    st=$?
    ref=()
    ((ref_ok)) && ref=("$out/batch_ref.jsonl")
    line=$(check_batch "$out/requests.jsonl" "$out/batch_$name.jsonl" "${ref[@]}" 2>&1)
    st2=$?
    if ((st == 0 && st2 == 0)); then
      echo "  batch ok: $line"
    else
      ok=0
      echo "  batch FAILED (exit status $st): $line"
      why "$out/batch_$name.log"
    fi
  fi
  echo "  $name: $( ((ok)) && echo passed || echo FAILED) in $((SECONDS - t0)) s"
  ((ok)) && passed=$((passed + 1)) || rc=1
done
echo "mpijobs: $passed of $total layouts passed ($backend, $preset $layers-layer slice, $numerics numerics) in $((SECONDS - t_all)) s"
exit $rc
