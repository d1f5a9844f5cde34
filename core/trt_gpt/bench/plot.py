"""`bench --plot`: throughput and latency percentiles of a report as one PNG (needs matplotlib)."""
from __future__ import annotations

from pathlib import Path

from ..errors import TrtGptError


def plot_report(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrtGptError("--plot needs matplotlib: pip install 'trt-gpt[plot]'") from None
    runs = [k for k in ("trt_gpt", "hf") if k in report]
    labels = ["trt-gpt" if k == "trt_gpt" else f"HF ({report['hf']['mode']})" for k in runs]
    colors = ["#2a9d8f", "#e76f51"][:len(runs)]  # one colour per system across the three panels
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(labels, [report[k]["output_tok_per_s"] for k in runs], color=colors)
    axes[0].set_title("output tokens/s")
    for ax, metric, title in ((axes[1], "ttft_ms", "time to first token (ms)"),
                              (axes[2], "tpot_ms", "time per output token (ms)")):
        ps = ["p50", "p90", "p99"]
        width = 0.8 / len(runs)
        for i, (k, lab) in enumerate(zip(runs, labels)):
            ax.bar([j + i * width for j in range(3)], [report[k][metric][p] for p in ps], width, label=lab,
                   color=colors[i])
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(3)], ps)
        ax.set_title(title)
        ax.legend()
    wl = report["workload"]
    fig.suptitle(f"{report['device']}, {report['dtype']}: {wl['num_requests']} requests, "
                 f"{wl['input_len']} in / {wl['output_len']} out")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
