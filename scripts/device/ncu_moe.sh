#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Where the 8K prefill's routed experts spend their time, kernel by kernel (Nsight Compute, clocks
# left alone, duration and DRAM throughput only): every launch of the MoE kernels (moe_*: routing,
# gather + FP8 quantization, SwiGLU + quantization, combine) and of the W4A8 GEMMs (fp4_*) over
# the whole `bench prefill` (its warm-up and measured prefills alike), summed per kernel name.
# `bench prefill` has the experts' op time (moe_experts) at about 9 ms a layer on the H100 against
# about 7 ms for their three GEMMs in `bench_cuda - fp4`: this says where the rest goes.
#   BUILD=build-gpu OUT=... [NCU_CONFIG=yaml] bash scripts/device/ncu_moe.sh     (bench_step built)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/device}; B=${BUILD:-build-gpu}; mkdir -p "$OUT"
source scripts/device/devdeps.sh
[[ -n $NCU ]] || { echo "ncu: not found"; exit 0; }
f=$OUT/ncu_moe.csv
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
timeout "${NCU_TIMEOUT:-200}" "$NCU" --clock-control none --csv --page raw --metrics $M -k "regex:moe_|fp4_" \
  "$B/tests/cuda/bench_step" bench prefill --backend cuda --preset flash --layers 2 --chunk 8192 --context 8192 \
  ${NCU_CONFIG:+--config "$NCU_CONFIG"} > "$f" 2> "$OUT/ncu_moe.err"
echo "== ncu moe rc $? (kernel: launches, total us, mean DRAM % weighted by time)"
python3 - "$f" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if len(rows) < 3: sys.exit(print("  no rows"))
h = rows[0]
name, dur, dram = (h.index(k) for k in ("Kernel Name", "gpu__time_duration.sum",
                                         "dram__throughput.avg.pct_of_peak_sustained_elapsed"))
unit = rows[1][dur]; scale = 1e-3 if unit == "ns" else (1e3 if unit == "ms" else 1.0)
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
for r in rows[2:]:
    try: t = float(r[dur].replace(",", ""))
    except ValueError: continue
    a = agg[r[name][:70]]; a[0] += 1; a[1] += t; a[2] += float(r[dram] or 0) * t
tot = sum(a[1] for a in agg.values())
for k, a in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"  {k:70s} {a[0]:5d} {a[1]*scale:10.1f} {a[2]/a[1]:6.1f}  ({100*a[1]/tot:.1f}%)")
print(f"  total {tot*scale:.1f} us over {sum(a[0] for a in agg.values())} launches")
PY
