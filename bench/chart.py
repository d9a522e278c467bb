"""The PNG chart of a throughput run: req/s per scenario per proxy, and latency percentiles.

Rules: matplotlib is optional (the `bench` extra); without it the chart is skipped with a note,
never the run. Both axes are logarithmic because 1 MiB and 200 B scenarios differ by 100×.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from report import Summary


def write(summaries: Sequence[Summary], scenarios: Sequence[str], title: str, path: Path) -> str:
    """Draw the chart to `path`; returns what happened, for the run's output."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib missing (`.venv/bin/pip install -e '.[bench]'`)"
    proxies = list(dict.fromkeys(s.proxy for s in summaries))
    keys = [k for k in scenarios if any(s.scenario == k for s in summaries)]
    by = {(s.scenario, s.proxy): s for s in summaries}
    width = 0.8 / max(1, len(proxies))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(10, 1.6 * len(keys)), 9))
    for i, proxy in enumerate(proxies):
        xs = [k_i + i * width for k_i, k in enumerate(keys) if (k, proxy) in by]
        rows = [by[(k, proxy)] for k in keys if (k, proxy) in by]
        color = f"C{i}"
        top.bar(xs, [r.rps_median for r in rows], width, label=proxy, color=color)
        top.errorbar(xs, [r.rps_median for r in rows], fmt="none", ecolor="black", linewidth=0.8,
                     yerr=[[r.rps_median - r.rps_min for r in rows],
                           [r.rps_max - r.rps_median for r in rows]])  # fmt: skip
        bottom.bar(xs, [r.p99_ms for r in rows], width, color=color, label=proxy)
        bottom.scatter(xs, [r.p50_ms for r in rows], marker="o", s=12, color="black", zorder=3)
        bottom.scatter(xs, [r.p999_ms for r in rows], marker="^", s=14, color="red", zorder=3)
    ticks = [k_i + width * (len(proxies) - 1) / 2 for k_i in range(len(keys))]
    for ax in (top, bottom):
        ax.set_xticks(ticks, keys, rotation=20)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    top.set_ylabel("req/s (median, min–max)")
    top.legend(ncol=min(len(proxies), 4), fontsize=8)
    top.set_title(title, fontsize=9)
    bottom.set_ylabel("latency ms: bar p99, ● p50, ▲ p99.9")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"
