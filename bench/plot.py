"""Plots of vitrine-bench results: results.json files in, PNG files out (matplotlib, Agg).

    /usr/bin/python3 bench/plot.py build/bench/serve/vitrine/results.json \\
        build/bench/serve/peer/results.json --out build/bench/serve [--slo-ms 100]

Writes, under --out:
- latency-throughput.png: for every system (results file), p50 and p99 latency (ms, log scale)
  against throughput (OK answers/s), one curve per sweep (closed loop: solid, the points
  labelled with the concurrency; open loop: dashed, labelled with the target rate), with the
  latency objective as a dotted line. An open-loop point past the knee (unstable, or with
  errors, drops or a generator that fell behind) is drawn hollow.
- hist-LABEL.png, one per system: the latency histogram of every step (OK answers of the
  result windows, 20 log-spaced buckets per decade as vitrine-bench wrote them), one panel per
  step with its p50 and p99 marked.
Prints the paths it wrote.
"""
import argparse
import json
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
PLAIN = FuncFormatter(lambda v, _: "%g" % v)


def log_axis(axis):
    """A log axis labelled 1, 2, 5, 10, ... in plain numbers (no minor-tick labels)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(PLAIN)
    axis.set_minor_formatter(NullFormatter())


def load(path):
    with open(path) as f:
        d = json.load(f)
    if d.get("tool") != "vitrine-bench":
        raise SystemExit("plot.py: %s is not a vitrine-bench results.json" % path)
    return d


def degraded(s):
    """A step whose numbers describe an overloaded or unreliable measurement."""
    g = s.get("generator", {})
    return (not s["stable"]) or s["errors"] > 0 or g.get("dropped", 0) > 0 or g.get("behind")


def plot_latency_throughput(runs, out, slo_ms):
    fig, ax = plt.subplots(figsize=(9, 6))
    for i, d in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        for mode, style in (("closed", "-"), ("open", "--")):
            steps = [s for s in d["steps"] if s["mode"] == mode and s["latency_ms"]["n"] > 0]
            if not steps:
                continue
            x = [s["ok_per_s"] for s in steps]
            for q, width, marker in (("p50", 1.0, "o"), ("p99", 2.0, "s")):
                y = [s["latency_ms"][q] for s in steps]
                ax.plot(x, y, style, color=color, linewidth=width, alpha=0.9,
                        label="%s %s loop %s" % (d["label"], mode, q))
                for s, xi, yi in zip(steps, x, y):
                    ax.plot([xi], [yi], marker, color=color, markersize=4 + width,
                            markerfacecolor="none" if degraded(s) else color)
            for s in steps:  # the load of each point, next to its p99
                ax.annotate(s["step"], (s["ok_per_s"], s["latency_ms"]["p99"]), fontsize=7,
                            color=color, xytext=(3, 3), textcoords="offset points")
    if slo_ms:
        ax.axhline(slo_ms, color="gray", linestyle=":", linewidth=1)
        ax.annotate("p99 objective %g ms" % slo_ms, (1, slo_ms), xycoords=("axes fraction", "data"),
                    fontsize=8, color="gray", xytext=(-4, 3), textcoords="offset points",
                    ha="right")
    # log-log: systems an order of magnitude apart stay readable side by side
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.xaxis)
    log_axis(ax.yaxis)
    ax.set_xlabel("throughput (OK answers / s, log scale)")
    ax.set_ylabel("client latency (ms, log scale)")
    ax.set_title("Recommend latency against throughput (hollow: unstable, errors, drops or "
                 "generator behind)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = os.path.join(out, "latency-throughput.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_histograms(d, out, color):
    steps = [s for s in d["steps"] if s["histogram"]["buckets"]]
    if not steps:
        return None
    cols = min(4, len(steps))
    rows = math.ceil(len(steps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    # one latency range for every panel, at least a decade wide
    lo_ms = min(max(b[0], 1.0) for s in steps for b in s["histogram"]["buckets"]) / 1000
    hi_ms = max(b[1] for s in steps for b in s["histogram"]["buckets"]) / 1000
    if hi_ms < 10 * lo_ms:
        mid = math.sqrt(lo_ms * hi_ms)
        lo_ms, hi_ms = mid / math.sqrt(10), mid * math.sqrt(10)
    for ax, s in zip(axes.flat, steps):
        b = s["histogram"]["buckets"]  # [lo_us, hi_us, count]
        lo = [max(x[0], 1.0) / 1000 for x in b]
        width = [(x[1] - max(x[0], 1.0)) / 1000 for x in b]
        ax.bar(lo, [x[2] for x in b], width=width, align="edge", color=color, alpha=0.8)
        for q, ls in (("p50", "-"), ("p99", "--")):
            ax.axvline(s["latency_ms"][q], color="black", linestyle=ls, linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(lo_ms, hi_ms)
        log_axis(ax.xaxis)
        ax.set_title("%s %s: %.0f ok/s, p50 %.3g, p99 %.3g ms%s" % (
            s["mode"], s["step"], s["ok_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
            "" if s["stable"] else " (unstable)"), fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("latency (ms)", fontsize=7)
        ax.set_ylabel("answers", fontsize=7)
    for ax in list(axes.flat)[len(steps):]:
        ax.set_visible(False)
    fig.suptitle("%s: latency histograms (OK answers; solid p50, dashed p99)" % d["label"],
                 fontsize=10)
    fig.tight_layout()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", d["label"])
    path = os.path.join(out, "hist-%s.png" % name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files written by vitrine-bench")
    ap.add_argument("--out", required=True, help="directory for the PNG files")
    ap.add_argument("--slo-ms", type=float, default=100.0, help="draw this p99 objective (0: none)")
    a = ap.parse_args(argv)
    runs = [load(p) for p in a.results]
    os.makedirs(a.out, exist_ok=True)
    written = [plot_latency_throughput(runs, a.out, a.slo_ms)]
    for i, d in enumerate(runs):
        written.append(plot_histograms(d, a.out, COLORS[i % len(COLORS)]))
    for p in written:
        if p:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
