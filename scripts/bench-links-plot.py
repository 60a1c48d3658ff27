#!/usr/bin/python3
"""Plots of a link benchmark's results.json (scripts/bench-links.sh runs it):

  throughput.png       pendrive write and read MB/s per path, one group per link (Table I)
  rtt-pdf-LINK.png     density of the serial round trips per path (the research's Fig. 9)
  rtt-series-LINK.png  the round trips in order (Fig. 8)
  hid.png              HID round trips (p50, p99) and the stream's delivered rate

Usage: bench-links-plot.py RESULTS_DIR
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SERIES = ("serial-slow", "serial-back-to-back")


def cells_by_link(results):
    """{link name or 'local': [cell, ...]} in the run's order."""
    out = {}
    for cell in results["cells"]:
        out.setdefault(cell["link"] or "local", []).append(cell)
    return out


def metric(cell, workload, path):
    """A number in a workload's result by its dotted path, NaN when missing."""
    value = cell["results"].get(workload, {})
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else np.nan


def rtts_ms(cell, workload):
    samples = cell["results"].get(workload, {}).get("rtt_us") or []
    return np.array(samples, dtype=float) / 1000.0


def throughput(results, out):
    cells = results["cells"]
    labels = [f"{c['link'] or 'local'}\n{c['path']}" for c in cells]
    x = np.arange(len(cells))
    fig, ax = plt.subplots(figsize=(max(6, len(cells) * 0.9), 4.5))
    ax.bar(x - 0.2, [metric(c, "disk-write", "mb_per_s") for c in cells], 0.4, label="write")
    ax.bar(x + 0.2, [metric(c, "disk-read", "mb_per_s") for c in cells], 0.4, label="read")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("MB/s")
    ax.set_title(f"Pendrive, {results['plan']['disk_mib']} MiB sequential")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)


def rtt_plots(results, out):
    local = [c for c in results["cells"] if c["link"] is None]
    for link, cells in cells_by_link(results).items():
        if link == "local":
            continue
        shown = local + cells
        for kind, name in (("pdf", "rtt-pdf"), ("series", "rtt-series")):
            fig, axes = plt.subplots(1, len(SERIES), figsize=(11, 4))
            for ax, workload in zip(axes, SERIES):
                for c in shown:
                    rtt = rtts_ms(c, workload)
                    if len(rtt) == 0:
                        continue
                    if kind == "pdf":
                        hi = np.percentile(rtt, 99.5)
                        ax.hist(rtt, bins=60, range=(0, hi * 1.05), density=True,
                                histtype="step", label=c["path"])
                        ax.set_xlabel("round trip (ms)")
                        ax.set_ylabel("density")
                    else:
                        ax.plot(rtt, ".", markersize=2, label=c["path"])
                        ax.set_xlabel("round trip #")
                        ax.set_ylabel("ms")
                ax.set_title(workload)
                ax.legend(fontsize=7)
            fig.suptitle(f"Serial round trips over {link}")
            fig.tight_layout()
            fig.savefig(out / f"{name}-{link}.png", dpi=120)
            plt.close(fig)


def hid(results, out):
    cells = results["cells"]
    labels = [f"{c['link'] or 'local'}\n{c['path']}" for c in cells]
    x = np.arange(len(cells))
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, len(cells) * 1.1), 4.5))
    a.bar(x - 0.2, [metric(c, "hid-ping", "rtt_stats_us.p50") / 1000 for c in cells], 0.4, label="p50")
    a.bar(x + 0.2, [metric(c, "hid-ping", "rtt_stats_us.p99") / 1000 for c in cells], 0.4, label="p99")
    a.set_xticks(x, labels, fontsize=6)
    a.set_ylabel("ms")
    a.set_title("HID round trips")
    a.legend()
    b.bar(x, [metric(c, "hid-stream", "rate_per_s") for c in cells])
    b.set_xticks(x, labels, fontsize=6)
    b.set_ylabel("reports/s")
    b.set_title(f"Interrupt stream, a report every {results['plan']['stream_interval_ms']} ms")
    fig.tight_layout()
    fig.savefig(out / "hid.png", dpi=120)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    results = json.loads((out / "results.json").read_text())
    throughput(results, out)
    rtt_plots(results, out)
    hid(results, out)


if __name__ == "__main__":
    main()
