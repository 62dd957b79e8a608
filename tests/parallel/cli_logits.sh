#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `mpirun -np N v4rt logits ... --config LAYOUT` equals the single-rank `v4rt logits` with the same
# command line: golden tiny-a ids, chunked prefill (301) then decode from 520. Passes when the
# relative Frobenius error of the logits is <= TOL. Usage:
#   V4RT_GOLDEN_DIR=tests/data/golden cli_logits.sh V4RT MPIEXEC NP LAYOUT_YAML TOL [LAUNCHER...]
# LAUNCHER (optional) replaces "MPIEXEC -np NP --oversubscribe" (e.g. scripts/netns/run.sh --np 4).
# V4RT_CLI_BACKEND=cuda runs both sides on the CUDA backend (exit 77, a skip, without a GPU); ranks
# beyond the node's GPUs share them through the staged Comm. V4RT_CLI_NUMERICS=official selects the
# official numerics on both sides (EP dispatch then sends FP8 rows with their block scales).
set -eu
v4rt=$1; mpiexec=$2; np=$3; layout=$4; tol=$5; shift 5
golden=${V4RT_GOLDEN_DIR:?set V4RT_GOLDEN_DIR to tests/data/golden}/tiny-a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
args=(logits --model "$golden/model" --ids "$golden/reference.safetensors" --chunk 301 --decode-from 520)
[[ -n "${V4RT_CLI_NUMERICS:-}" ]] && args+=(--numerics "$V4RT_CLI_NUMERICS")
if [[ -n "${V4RT_CLI_BACKEND:-}" ]]; then
  if [[ "$V4RT_CLI_BACKEND" == cuda ]] && ! (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU); then
    echo "no CUDA device: skipped"
    exit 77
  fi
  args+=(--backend "$V4RT_CLI_BACKEND")
fi
"$v4rt" "${args[@]}" --out "$work/single.safetensors"
if [[ $# -gt 0 ]]; then
  "$@" "$v4rt" "${args[@]}" --config "$layout" --out "$work/sharded.safetensors"
else
  "$mpiexec" -np "$np" --oversubscribe "$v4rt" "${args[@]}" --config "$layout" --out "$work/sharded.safetensors"
fi
python3 - "$work/single.safetensors" "$work/sharded.safetensors" "$tol" <<'PY'
import json, math, struct, sys
def logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header["logits"]
        f.seek(8 + n + t["data_offsets"][0])
        count = t["shape"][0] * t["shape"][1]
        return struct.unpack("<%df" % count, f.read(4 * count))
a, b, tol = logits(sys.argv[1]), logits(sys.argv[2]), float(sys.argv[3])
assert len(a) == len(b), "shapes differ"
num = sum((x - y) ** 2 for x, y in zip(a, b))
den = sum(x * x for x in a)
err = math.sqrt(num / den)
print("sharded vs single-rank logits: rel err %.3e (tol %.1e)" % (err, tol))
sys.exit(0 if err <= tol else 1)
PY
