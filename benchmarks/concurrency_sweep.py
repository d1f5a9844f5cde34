"""Throughput and latency against concurrency: `trt-gpt bench` over a list of concurrencies, and the plot.

    python3 benchmarks/concurrency_sweep.py run --engine_dir ENG --out DIR --concurrency 1 4 16 64 256 1024
    python3 benchmarks/concurrency_sweep.py plot DIR --png sweep.png          # CPU is enough: reads DIR/*.json
    python3 benchmarks/concurrency_sweep.py report REPORT.json --png run.png  # bench --plot of a saved report

`run` writes one `trt-gpt bench --output` report a concurrency (DIR/c<N>.json) and passes any further
arguments to `trt-gpt bench` (e.g. `--compare_hf --hf_eager`). `plot` draws output tokens/s and TPOT
p50/p90 against the number of requests in flight, trt-gpt and (where the reports have it) HF side by side.
`report` redraws the one-run figure of `trt-gpt bench --plot` from a report saved with `--output`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SYSTEMS = (("trt_gpt", "trt-gpt", "#2a9d8f"), ("hf", "HF transformers", "#e76f51"))  # colours of bench --plot


def concurrency_of(report: dict) -> int:
    """Requests in flight at most: the closed-loop limit, or every request when none was set."""
    wl = report["workload"]
    return int(wl["concurrency"] or wl["num_requests"])


def sweep_points(reports: list[dict]) -> dict[str, list[tuple[int, float, float, float]]]:
    """system -> [(concurrency, output tok/s, TPOT p50 ms, TPOT p90 ms)] sorted by concurrency."""
    out: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in reports:
        for key, _, _ in SYSTEMS:
            if key in r:
                s = r[key]
                out.setdefault(key, []).append((concurrency_of(r), s["output_tok_per_s"], s["tpot_ms"]["p50"],
                                                s["tpot_ms"]["p90"]))
    return {k: sorted(v) for k, v in out.items()}


def load_reports(directory: Path) -> list[dict]:
    reports = []
    for f in sorted(directory.glob("*.json")):
        r = json.loads(f.read_text())
        if isinstance(r, dict) and "workload" in r and "trt_gpt" in r:
            reports.append(r)
    if not reports:
        sys.exit(f"error: {directory}: no `trt-gpt bench --output` reports (*.json)")
    return reports


def plot_sweep(reports: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sweep_points(reports)
    fig, (ax_tput, ax_tpot) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, colour in SYSTEMS:
        if key not in points:
            continue
        conc, tput, p50, p90 = zip(*points[key])
        ax_tput.plot(conc, tput, "o-", color=colour, label=label)
        ax_tpot.plot(conc, p50, "o-", color=colour, label=f"{label} p50")
        ax_tpot.plot(conc, p90, "o--", color=colour, alpha=0.6, label=f"{label} p90")
    for ax, title in ((ax_tput, "output tokens/s"), (ax_tpot, "time per output token (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    r, wl = reports[0], reports[0]["workload"]
    fig.suptitle(f"{r['device']}, {r['dtype']}: {wl['input_len']} in / {wl['output_len']} out")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def run_sweep(args: argparse.Namespace, bench_args: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    for c in args.concurrency:
        n = max(16, args.requests_per_concurrency * c) if args.requests_per_concurrency else args.num_requests
        # this interpreter's trt-gpt: a `trt-gpt` script on PATH may belong to another Python
        cmd = [sys.executable, "-m", "trt_gpt.cli.main", "bench", "--engine_dir", str(args.engine_dir),
               "--num_requests", str(n),
               "--concurrency", str(c), "--input_len", str(args.input_len), "--output_len", str(args.output_len),
               "--output", str(args.out / f"c{c}.json"), *bench_args]
        print("==", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    print(f"{len(args.concurrency)} reports in {args.out}; plot: python3 {sys.argv[0]} plot {args.out} --png FILE")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run", help="trt-gpt bench at each concurrency (GPU)")
    run.add_argument("--engine_dir", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    run.add_argument("--num_requests", type=int, default=1024)
    run.add_argument("--requests_per_concurrency", type=int, default=0,
                     help="instead of --num_requests: K x the concurrency requests (at least 16) each point")
    run.add_argument("--input_len", type=int, default=128)
    run.add_argument("--output_len", type=int, default=128)
    plot = sub.add_parser("plot", help="plot a directory of reports")
    plot.add_argument("dir", type=Path)
    plot.add_argument("--png", type=Path, required=True)
    one = sub.add_parser("report", help="the `trt-gpt bench --plot` figure of one saved report")
    one.add_argument("report", type=Path)
    one.add_argument("--png", type=Path, required=True)
    args, rest = ap.parse_known_args(argv)
    if rest and args.what != "run":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.what == "run":
        run_sweep(args, rest)
    elif args.what == "plot":
        plot_sweep(load_reports(args.dir), args.png)
        print(f"wrote {args.png}")
    else:
        from trt_gpt.bench.plot import plot_report  # the figure `trt-gpt bench --plot` draws

        plot_report(json.loads(args.report.read_text()), args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
