#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Sums an Nsight Compute raw CSV (--csv --page raw) with the metrics gpu__time_duration.sum,
# dram__throughput.avg.pct_of_peak_sustained_elapsed and sm__throughput.avg.pct_of_peak_sustained_elapsed
# per kernel name: launches, microseconds per run (the total over RUNS), the DRAM and SM throughput
# in % of peak averaged by time, the share of the total; the TOP kernels by time, then the total.
#   python3 scripts/device/ncu_sum.py CSV [RUNS=1] [TOP=30] [WHAT="per run"]
import collections
import csv
import sys

DUR = "gpu__time_duration.sum"
DRAM = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
SM = "sm__throughput.avg.pct_of_peak_sustained_elapsed"

path = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
what = sys.argv[4] if len(sys.argv) > 4 else "per run"
rows = [r for r in csv.reader(open(path)) if len(r) > 10]
if len(rows) < 3:
    sys.exit(print("  no rows"))
ix = {k: rows[0].index(k) for k in ("Kernel Name", DUR, DRAM, SM)}
agg = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
for r in rows[2:]:
    try:
        t = float(r[ix[DUR]].replace(",", ""))
    except ValueError:
        continue
    a = agg[r[ix["Kernel Name"]][:70]]
    a[0] += 1
    a[1] += t
    a[2] += float(r[ix[DRAM]] or 0) * t
    a[3] += float(r[ix[SM]] or 0) * t
unit = rows[1][ix[DUR]]
scale = (1e-3 if unit == "ns" else 1e3 if unit == "ms" else 1.0) / runs  # to us per run
tot = sum(a[1] for a in agg.values())
for k, a in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f"  {k:70s} {a[0]:5d} {a[1] * scale:10.1f} {a[2] / a[1]:6.1f} {a[3] / a[1]:6.1f}  ({100 * a[1] / tot:.1f}%)")
print(f"  total {tot * scale:.1f} us {what}, {sum(a[0] for a in agg.values())} launches")
