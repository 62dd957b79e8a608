#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Where a prefill kernel spends its time, from an 8K `bench prefill` (bench_step built): one launch
# of the kernels matching NCU_KERNEL (a regex; default the warp-specialized W4A8 expert GEMM), NCU_SKIP
# launches skipped first (default 2: layer 0's down projection), profiled with PC sampling, then
#   $OUT/ncu_<tag>_stalls.txt  every warp stall reason, cycles per issued instruction;
#   $OUT/ncu_<tag>_sass.csv    the SASS with its samples and stall reasons per instruction;
#   $OUT/ncu_<tag>_top.txt     the 60 instructions with the most samples;
# tag = NCU_TAG (default experts); NCU_CONFIG: a runtime YAML for the prefill (`--config`);
# NCU_CONTEXT: the prompt length (default 8192, in chunks of 8192: a late chunk of a long prompt
# with NCU_SKIP set past the earlier chunks' launches); NCU_SECTIONS: more sections to collect
# (e.g. "MemoryWorkloadAnalysis": the L2 hit rate and the bytes at each level).
#   BUILD=build-gpu OUT=... [NCU_KERNEL=sparse_attention_tc NCU_SKIP=0 NCU_TAG=attention] bash scripts/device/ncu_prefill.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; B=${BUILD:-build-gpu}; mkdir -p "$OUT"
source scripts/device/devdeps.sh
[[ -n $NCU ]] || { echo "ncu: not found"; exit 0; }
T=${NCU_TAG:-experts}; R=/tmp/ncu_$T
timeout ${NCU_TIMEOUT:-150} "$NCU" --clock-control none -k "regex:${NCU_KERNEL:-wgmma_ws}" --launch-skip ${NCU_SKIP:-2} --launch-count 1 \
  --section WarpStateStats --section SourceCounters --section SpeedOfLight \
  $(for x in ${NCU_SECTIONS:-}; do echo --section "$x"; done) -f -o $R \
  $B/tests/cuda/bench_step bench prefill --backend cuda --preset flash --layers 2 --chunk 8192 \
  --context ${NCU_CONTEXT:-8192} \
  ${NCU_CONFIG:+--config "$NCU_CONFIG"} > "$OUT/ncu_${T}_collect.txt" 2>&1
echo "ncu collect rc $?"
"$NCU" --import $R.ncu-rep --page raw --csv > /tmp/ncu_raw.csv 2>&1
python3 - /tmp/ncu_raw.csv > "$OUT/ncu_${T}_stalls.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if len(rows) < 3: sys.exit(print("no raw rows"))
h, v = rows[0], rows[2]
for name, val in sorted(zip(h, v)):
    if ("warp_latency_issue_stalled" in name or "issue_stalled" in name and "ratio" in name or "duration" in name
            or "throughput.avg.pct_of_peak_sustained_elapsed" in name or "issue_active" in name
            or "hit_rate" in name or name.endswith("bytes.sum") or name.endswith("bytes.sum.per_second")):
        print(f"{name:90s} {val}")
PY
head -80 "$OUT/ncu_${T}_stalls.txt"
"$NCU" --import $R.ncu-rep --page source --csv --print-source sass > "$OUT/ncu_${T}_sass.csv" 2> "$OUT/ncu_${T}_sass.err"
echo "source page rc $? ($(wc -l < "$OUT/ncu_${T}_sass.csv") lines)"
python3 - "$OUT/ncu_${T}_sass.csv" > "$OUT/ncu_${T}_top.txt" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
hi = next((i for i, r in enumerate(rows) if any("Source" == c or "Address" in c for c in r)), None)
if hi is None: sys.exit(print("no header"))
h = rows[hi]
def col(*names):
    for n in names:
        for i, c in enumerate(h):
            if c.strip() == n: return i
    return None
src = col("Source"); smp = col("Warp Stall Sampling (All Samples)", "Sampling Data (All)")
if src is None or smp is None: sys.exit(print("columns:", h))
data = []
for r in rows[hi + 1:]:
    try: data.append((float(r[smp].replace(",", "") or 0), r))
    except (ValueError, IndexError): pass
tot = sum(d[0] for d in data) or 1
print("columns:", " | ".join(h))
for s, r in sorted(data, key=lambda d: -d[0])[:60]:
    extra = [f"{h[i]}={r[i]}" for i in range(len(h)) if i not in (src, smp) and r[i] not in ("", "0")][:8]
    print(f"{100 * s / tot:5.1f}%  {r[src][:70]:70s}  {' '.join(extra)[:300]}")
PY
head -70 "$OUT/ncu_${T}_top.txt"
