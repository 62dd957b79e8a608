#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Throughput against latency from `v4rt bench serve --json-out` JSON lines (one line per
# concurrency level), drawn with gnuplot: left, total tokens/s per GPU against the median TPOT;
# right, output tokens/s per GPU against the median TTFT. Every point is one concurrency level,
# labelled with it; each series is one (label, input/output length, streaming) of the files, so
# several runs (layouts, engines, GPUs) sit on one plot. Also writes the series as .dat tables.
#
#   v4rt bench serve --concurrency 1,4,16,64 --json-out build/serve/h200_tp1.jsonl --label "1xH200 tp1"
#   scripts/scaling/plot_serve.py build/serve/*.jsonl --out build/serve/serve.svg
#
# Levels measured without streaming have no TTFT / TPOT and are left out (they are listed).
import argparse
import json
import os
import re
import shutil
import subprocess
import sys


def load(paths):
    series = {}
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not a JSON line: {e}")
                if row.get("bench") != "serve":
                    sys.exit(f"{path}:{n}: not a `v4rt bench serve` line (no \"bench\": \"serve\")")
                name = row.get("label") or os.path.splitext(os.path.basename(path))[0]
                name += f" ({row['input_len']}/{row['output_len']}{'' if row['stream'] else ', no stream'})"
                series.setdefault(name, []).append(row)
    return series


def write_dat(path, rows):
    with open(path, "w") as f:
        f.write("# concurrency tpot_p50_ms ttft_p50_ms total_tok_s_per_gpu output_tok_s_per_gpu "
                "tok_s_per_user completed failed\n")
        for r in sorted(rows, key=lambda r: r["concurrency"]):
            tpot, ttft = r["tpot_p50_ms"], r["ttft_p50_ms"]
            user = 1000.0 / tpot if tpot else float("nan")
            f.write(f"{r['concurrency']} {tpot} {ttft} {r['total_tok_s_per_gpu']:.3f} "
                    f"{r['output_tok_s_per_gpu']:.3f} {user:.3f} {r['completed']} {r['failed']}\n")


def main():
    ap = argparse.ArgumentParser(description="Throughput against latency from `v4rt bench serve --json-out` JSON lines.")
    ap.add_argument("jsonl", nargs="+", help="JSON lines files written by `v4rt bench serve --json-out`")
    ap.add_argument("--out", required=True, help="image to write (.svg or .png)")
    ap.add_argument("--title", default="v4rt serving: throughput against latency")
    args = ap.parse_args()
    series = load(args.jsonl)
    if not series:
        sys.exit("no levels in the given files")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.out))[0]
    left, right = [], []
    for i, (name, rows) in enumerate(sorted(series.items())):
        timed = [r for r in rows if r["tpot_p50_ms"] is not None and r["ttft_p50_ms"] is not None]
        for r in rows:
            if r not in timed:
                print(f"{name}: concurrency {r['concurrency']} has no TTFT/TPOT (not streamed), not plotted")
            if r["failed"] or r["not_sent"]:
                print(f"{name}: concurrency {r['concurrency']}: {r['failed']} failed, {r['not_sent']} not sent")
        if not timed:
            continue
        dat = os.path.join(out_dir, f"{stem}_{i}_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.dat")
        write_dat(dat, timed)
        title = name.replace('"', "'")
        left.append(f'"{dat}" using 2:4 with linespoints lw 2 pt 7 lc {i + 1} title "{title}", '
                    f'"{dat}" using 2:4:1 with labels offset 0.8,0.6 font ",8" tc lt {i + 1} notitle')
        right.append(f'"{dat}" using 3:5 with linespoints lw 2 pt 7 lc {i + 1} title "{title}", '
                     f'"{dat}" using 3:5:1 with labels offset 0.8,0.6 font ",8" tc lt {i + 1} notitle')
    if not left:
        sys.exit("no streamed levels to plot (TTFT and TPOT need --stream)")
    term = "svg size 1100,500 dynamic" if args.out.endswith(".svg") else "pngcairo size 1100,500"
    script = f"""
set terminal {term}
set output "{args.out}"
set datafile missing "None"
set multiplot layout 1,2 title "{args.title} (point labels: concurrency)"
set grid
set key top left
set xlabel "median TPOT (ms)"
set ylabel "total tokens/s per GPU"
plot {", ".join(left)}
set xlabel "median TTFT (ms)"
set ylabel "output tokens/s per GPU"
plot {", ".join(right)}
unset multiplot
"""
    if not shutil.which("gnuplot"):
        sys.exit("gnuplot is not installed (the .dat tables are written)")
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
