#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Scaling sweep: for every rank count and parallel layout, writes the planner's prediction
# (`v4rt plan --csv`) and, where a measurement exists, the measured decode step (`v4rt bench step`
# under mpirun) into one CSV, then draws throughput and step time vs ranks with gnuplot
# (scripts/scaling/plot.gp): measured points next to predicted ones.
#
# Measured numbers only ever come from `measure_step()` (a real run) or from --measured CSV files
# written by earlier runs (e.g. on the GPU machine). When neither exists the CSV holds predictions
# only and the plots show no measured points. A run is `v4rt bench step` with the layout flags when
# the binary has them; otherwise (CPU ranks today) `mpirun -np N v4rt generate` on the checkpoint
# --bench-model with a runtime YAML carrying the layout: a prompt of --context tokens is prefilled,
# then --steps decode steps are timed (one sequence per replica: batch = dp).
#
#   scripts/scaling/sweep.py --model flash --gpu h200 --ranks 8,16 --context 65536 --batch 8 \
#       --out build/scaling                                # predictions (+ GPU measurements if run there)
#   scripts/scaling/sweep.py --mode cpu --model tiny --gpu cpu-xeon-2core --gpus-per-node 4 \
#       --ranks 1,2,4 --context 512 --batch 1 --layouts '1,1,1,1;2,1,1,1;1,2,1,1' --measure
#   v4rt plan validate --points build/scaling/results.csv --fit-on gpus=1   # predicted vs measured
import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

COLUMNS = ["source", "model", "gpu", "nodes", "gpus_per_node", "tp", "sp", "ep", "dp", "context",
           "batch", "kv_format", "batching", "head", "step_ms", "tokens_per_s", "prefill_s", "max_seqs",
           "recommended", "command"]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def cluster_of(ranks, gpus_per_node):
    per_node = min(ranks, gpus_per_node)
    if ranks % per_node:
        sys.exit(f"sweep: {ranks} ranks do not fill nodes of {gpus_per_node}")
    return ranks // per_node, per_node


def predict(args, ranks, layout=None):
    """Rows of `v4rt plan --csv` for this rank count (every valid layout, or the given one)."""
    nodes, per_node = cluster_of(ranks, args.gpus_per_node)
    batch = args.batch
    if layout and args.measure and not args.bench_has_layout:
        batch = int(layout.split(",")[3])  # `generate` decodes one sequence per replica
    cmd = [args.v4rt, "plan", "--csv", "--model", args.model, "--gpu", args.gpu,
           "--nodes", str(nodes), "--gpus-per-node", str(per_node), "--context", str(args.context),
           "--batch", str(batch), "--kv-format", args.kv_format, "--batching", args.batching,
           "--head", args.head]
    if layout:
        cmd += ["--layout", layout]
    if args.calibration:
        cmd += ["--calibration", args.calibration]
    r = run(cmd)
    if r.returncode not in (0, 2):
        sys.exit(f"sweep: {' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    rows = [row for row in csv.DictReader(io.StringIO(r.stdout)) if not row.get("rejected")]
    for row in rows:
        row["gpu"] = args.gpu
    return rows


def bench_available(v4rt):
    """True when this binary's `bench step` takes a layout (--tp) and prints CSV (--csv)."""
    r = run([v4rt, "bench", "step", "--help"])
    return r.returncode == 0 and "--tp" in r.stdout and "--csv" in r.stdout


def generate_available(v4rt):
    r = run([v4rt, "generate", "--help"])
    return r.returncode == 0 and "--config" in r.stdout


def mpirun_env():
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader,tcp", OMPI_MCA_rmaps_base_oversubscribe="1")
    return env


def measure_generate(args, ranks, layout):
    """Decode step of `v4rt generate` under mpirun with this layout (one sequence per replica)."""
    tp, sp, ep, dp = layout.split(",")
    work = os.path.join(args.out, "runs")
    os.makedirs(work, exist_ok=True)
    name = f"r{ranks}_tp{tp}_sp{sp}_ep{ep}_dp{dp}"
    cfg = os.path.join(work, name + ".yaml")
    with open(cfg, "w") as f:
        f.write(f"model: {args.bench_model}\nnumerics: reference\n"
                f"parallel: {{tp: {tp}, sp: {sp}, ep: {ep}, dp: {dp}}}\n")
    ids = os.path.join(work, f"prompt_{args.context}.txt")
    with open(ids, "w") as f:  # a deterministic prompt of --context token ids
        f.write(" ".join(str(1000 + (i * 7919) % 100000) for i in range(args.context)) + "\n")
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", args.v4rt, "generate", "--model",
           args.bench_model, "--config", cfg, "--ids", ids, "--max-tokens", str(args.steps + 1)]
    runs = []
    for _ in range(args.repeats):
        try:
            r = run(cmd, env=mpirun_env(), timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"sweep: measurement timed out after {args.timeout} s: {' '.join(cmd)}", file=sys.stderr)
            return None
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
            print(f"sweep: measurement failed: {' '.join(cmd)}\n{tail}", file=sys.stderr)
            return None
        m = re.search(r"prefill: (\d+) tokens in ([0-9.]+) s .*decode: (\d+) tokens in ([0-9.]+) s", r.stderr)
        if not m or int(m.group(3)) < 2:
            print(f"sweep: no decode timing in the output of {' '.join(cmd)}", file=sys.stderr)
            return None
        # generate samples n tokens and runs n-1 decode steps between them.
        runs.append((float(m.group(4)) / (int(m.group(3)) - 1) * 1e3, float(m.group(2))))
    runs.sort()
    step_ms, prefill_s = runs[len(runs) // 2]  # the median run
    return {"step_ms": f"{step_ms:.3f}", "prefill_s": f"{prefill_s:.3f}", "batch": int(dp),
            "command": " ".join(cmd) + (f" (median of {len(runs)} runs)" if len(runs) > 1 else "")}


def measure_step(args, ranks, layout):
    """One measured point on `ranks` ranks with this layout, or None.

    `v4rt bench step` when it takes a layout, else `v4rt generate` (measure_generate). Nothing is
    returned when the run does not exist or fails, so no measured number is ever made up.
    """
    if not args.bench_has_layout:
        return measure_generate(args, ranks, layout)
    tp, sp, ep, dp = layout.split(",")
    bench = [args.v4rt, "bench", "step", "--model", args.bench_model or args.model,
             "--tp", tp, "--sp", sp, "--ep", ep, "--dp", dp, "--context", str(args.context),
             "--batch", str(args.batch), "--kv-format", args.kv_format, "--steps", str(args.steps),
             "--csv"]
    env = mpirun_env()
    if args.mode == "cpu":
        cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"] + bench
    else:
        cmd = ["mpirun", "-np", str(ranks)] + args.mpirun_args.split() + bench + ["--device", "cuda"]
    try:
        r = run(cmd, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"sweep: measurement timed out after {args.timeout} s: {' '.join(cmd)}", file=sys.stderr)
        return None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        print(f"sweep: measurement failed: {' '.join(cmd)}\n{tail}", file=sys.stderr)
        return None
    rows = [row for row in csv.DictReader(io.StringIO(r.stdout)) if row.get("step_ms")]
    if not rows:
        print(f"sweep: no step_ms in the output of {' '.join(cmd)}", file=sys.stderr)
        return None
    return {"step_ms": rows[-1]["step_ms"], "prefill_s": rows[-1].get("prefill_s", ""),
            "batch": args.batch, "command": " ".join(cmd)}


def measured_row(args, ranks, layout, m):
    nodes, per_node = cluster_of(ranks, args.gpus_per_node)
    tp, sp, ep, dp = layout.split(",")
    step_ms = float(m["step_ms"])
    batch = m["batch"]
    return {"source": "measured", "model": args.model, "gpu": args.gpu,
            "nodes": nodes, "gpus_per_node": per_node, "tp": tp, "sp": sp, "ep": ep, "dp": dp,
            "context": args.context, "batch": batch, "kv_format": args.kv_format,
            "batching": "sequential", "head": "leader", "step_ms": m["step_ms"],
            "tokens_per_s": f"{batch / step_ms * 1e3:.1f}", "prefill_s": m.get("prefill_s", ""),
            "max_seqs": "", "recommended": "", "command": m["command"]}


def read_measured(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("source", "measured") == "measured" and row.get("step_ms"):
                    rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--v4rt", default=os.path.join(ROOT, "build", "cpu", "launch", "v4rt"))
    ap.add_argument("--model", default="flash", help="planner model: flash | pro | folder")
    ap.add_argument("--bench-model", default="",
                    help="model of the measured runs: `bench step` preset (default --model), or the "
                         "checkpoint folder of `generate` (default data/models/tiny)")
    ap.add_argument("--gpu", default="h200", help="hardware table for the predictions")
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu",
                    help="where `v4rt bench step` runs: GPU ranks or CPU ranks on this machine")
    ap.add_argument("--ranks", default="1,2,4,8", help="comma-separated rank counts")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kv-format", default="compact",
                    help="KV format of the predictions (the CPU reference keeps F32 tables: f32)")
    ap.add_argument("--batching", default="",
                    help="batched | sequential for the predictions (default: sequential with --mode cpu, "
                         "as the runtime steps sequences today; batched otherwise)")
    ap.add_argument("--head", default="",
                    help="split | leader LM head for the predictions (default: leader with --mode cpu, as "
                         "the runtime's driver does today; split otherwise)")
    ap.add_argument("--layouts", default="", help="only these layouts: 'tp,sp,ep,dp;...'")
    ap.add_argument("--calibration", default="")
    ap.add_argument("--measure", action="store_true", help="run `v4rt bench step` for every point")
    ap.add_argument("--measured", action="append", default=[], help="CSV of earlier measured points")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="runs per point; the median is kept")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--mpirun-args", default="", help="extra mpirun arguments for GPU runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "scaling"))
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    args.batching = args.batching or ("sequential" if args.mode == "cpu" else "batched")
    args.head = args.head or ("leader" if args.mode == "cpu" else "split")

    if not os.access(args.v4rt, os.X_OK):
        sys.exit(f"sweep: no v4rt binary at {args.v4rt} (build it, or pass --v4rt)")
    os.makedirs(args.out, exist_ok=True)
    wanted = [l.strip() for l in args.layouts.split(";") if l.strip()]
    args.bench_has_layout = bench_available(args.v4rt)
    if not args.bench_has_layout and not args.bench_model:
        args.bench_model = os.path.join(ROOT, "data", "models", "tiny")
    can_measure = args.measure and (args.bench_has_layout or generate_available(args.v4rt))
    if args.measure and not can_measure:
        print("sweep: neither `v4rt bench step --tp` nor `v4rt generate` is available: predictions only",
              file=sys.stderr)

    rows = []
    for ranks in [int(r) for r in args.ranks.split(",") if r]:
        predicted = []
        if wanted:
            for layout in wanted:
                predicted += [p for p in predict(args, ranks, layout)]
        else:
            predicted = predict(args, ranks)
        rows += predicted
        if not can_measure:
            continue
        for p in predicted:
            layout = ",".join(p[k] for k in ("tp", "sp", "ep", "dp"))
            m = measure_step(args, ranks, layout)
            if m:
                rows.append(measured_row(args, ranks, layout, m))
    rows += read_measured(args.measured)

    result = os.path.join(args.out, "results.csv")
    with open(result, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row)
    n_meas = sum(1 for r in rows if r["source"] == "measured")
    print(f"sweep: {len(rows) - n_meas} predicted and {n_meas} measured points -> {result}")

    if args.no_plot:
        return
    if not shutil.which("gnuplot"):
        print("sweep: gnuplot not found: no plots", file=sys.stderr)
        return
    write_series(args.out, rows)
    title = f"{args.model} on {args.gpu}, context {args.context}, batch {args.batch}"
    for term, ext in (("pngcairo size 1100,500", "png"), ("svg size 1100,500", "svg")):
        out = os.path.join(args.out, f"scaling.{ext}")
        def plot(t):
            return run(["gnuplot", "-e", f"dir='{args.out}'; out='{out}'; term='{t}'; title='{title}'",
                        os.path.join(HERE, "plot.gp")])
        r = plot(term)
        if r.returncode != 0 and ext == "png":
            r = plot("png size 1100,500")  # gnuplot builds without cairo
        if r.returncode != 0:
            print(f"sweep: gnuplot failed for {out}:\n{r.stderr}", file=sys.stderr)
            continue
        print(f"sweep: plot -> {out}")


def write_series(out, rows):
    """Plot inputs (ranks, step_ms, tokens_per_s, layout): the best predicted layout per rank
    count, every predicted layout, measured points and the predictions for the measured layouts."""
    def key(r):
        return (int(r["nodes"]) * int(r["gpus_per_node"]), r["tp"], r["sp"], r["ep"], r["dp"])

    def line(r):
        return f'{key(r)[0]} {r["step_ms"]} {r["tokens_per_s"]} "{r["tp"]},{r["sp"]},{r["ep"]},{r["dp"]}"\n'

    predicted = [r for r in rows if r["source"] == "predicted" and r.get("step_ms")]
    measured = [r for r in rows if r["source"] == "measured" and r.get("step_ms")]
    best = {}
    for r in predicted:
        n = key(r)[0]
        if n not in best or float(r["tokens_per_s"]) > float(best[n]["tokens_per_s"]):
            best[n] = r
    by_key = {key(r): r for r in predicted}
    series = {
        "predicted_best.dat": [best[n] for n in sorted(best)],
        "predicted_all.dat": predicted,
        "measured.dat": measured,
        "predicted_for_measured.dat": [by_key[key(m)] for m in measured if key(m) in by_key],
    }
    for name, data in series.items():
        with open(os.path.join(out, name), "w") as f:
            f.write("# ranks step_ms tokens_per_s layout(tp,sp,ep,dp)\n")
            f.writelines(line(r) for r in data)
            if not data:
                f.write("NaN NaN NaN \"none\"\n")  # gnuplot needs at least one row


if __name__ == "__main__":
    main()
