"""Summaries of throughput runs: medians across repetitions, ratios to HAProxy and to the
pure-Python peer, the workers scaling ratio, a text table and a markdown table.

Rules: a ratio is None (printed `—`) whenever either side is missing; nothing is rounded before
it is divided; the markdown says on which machine and when, because numbers without that are
meaningless.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from throughput import Run, Scenario

REFERENCE = "haproxy"
PEER = "aiohttp-proxy"


@dataclass(frozen=True)
class Summary:
    """One proxy in one scenario. Ratios are to HAProxy's / the peer's medians (None without)."""

    scenario: str
    proxy: str
    reps: int
    rps_median: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us_per_req: float | None
    user_us_per_req: float | None
    errors: int
    rps_vs_haproxy: float | None
    cpu_vs_haproxy: float | None
    p99_vs_haproxy: float | None
    rps_vs_peer: float | None


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def _summarise_one(scenario: str, proxy: str, runs: Sequence[Run]) -> Summary:
    rps = [r.rps for r in runs]
    return Summary(
        scenario=scenario,
        proxy=proxy,
        reps=len(runs),
        rps_median=statistics.median(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        p999_ms=statistics.median(r.p999_ms for r in runs),
        cpu_us_per_req=_median_or_none([r.cpu_us_per_req for r in runs]),
        user_us_per_req=_median_or_none([r.user_us_per_req for r in runs]),
        errors=sum(r.socket_errors + r.status_errors for r in runs),
        rps_vs_haproxy=None,
        cpu_vs_haproxy=None,
        p99_vs_haproxy=None,
        rps_vs_peer=None,
    )


def summarise(runs: Sequence[Run]) -> list[Summary]:
    """One Summary per (scenario, proxy), in first-seen order, with ratios filled in."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.proxy), []).append(run)
    plain = [_summarise_one(s, p, rs) for (s, p), rs in groups.items()]
    refs = {s.scenario: s for s in plain if s.proxy == REFERENCE}
    peers = {s.scenario: s for s in plain if s.proxy == PEER}
    out = []
    for s in plain:
        ref, peer = refs.get(s.scenario), peers.get(s.scenario)
        out.append(
            replace(
                s,
                rps_vs_haproxy=_ratio(s.rps_median, ref.rps_median if ref else None),
                cpu_vs_haproxy=_ratio(s.cpu_us_per_req, ref.cpu_us_per_req if ref else None),
                p99_vs_haproxy=_ratio(s.p99_ms, ref.p99_ms if ref else None),
                rps_vs_peer=_ratio(s.rps_median, peer.rps_median if peer else None),
            )
        )
    return out


def scaling(summaries: Sequence[Summary], nproc: int, pinned: bool) -> list[dict[str, Any]]:
    """lbd `workers: 2` ÷ `workers: 1` per scenario where both ran, with the honest caveat."""
    # `lbd-w1` exists when lbd-w2 ran late, interleaved with lbd: the like-for-like reference.
    one = {s.scenario: s for s in summaries if s.proxy == "lbd"}
    one.update({s.scenario: s for s in summaries if s.proxy == "lbd-w1"})
    rows = []
    for s in summaries:
        if s.proxy == "lbd-w2" and s.scenario in one:
            rows.append(
                {
                    "scenario": s.scenario,
                    "rps_w1": one[s.scenario].rps_median,
                    "rps_w2": s.rps_median,
                    "ratio": _ratio(s.rps_median, one[s.scenario].rps_median),
                    "load_generator_own_cpu": nproc >= 3,
                    "note": (
                        "the load generator has its own CPU"
                        if nproc >= 3
                        else f"{nproc} CPU(s): wrk, the backend and both workers share them, so "
                        "this ratio does not show what 2 workers do on a machine with spare cores"
                    ),
                }
            )
    return rows


def _fmt(value: float | None, pattern: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, pattern) + suffix


COLUMNS = (
    "proxy", "req/s median (min-max)", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/req",
    "user µs/req",
    "req/s÷haproxy", "CPU÷haproxy", "p99÷haproxy", "req/s÷aiohttp", "errors",
)  # fmt: skip
_WIDTHS = (13, 30, 8, 8, 9, 11, 12, 14, 12, 12, 14, 7)
HEADER = " ".join(
    c.ljust(w) if i == 0 else c.rjust(w)
    for i, (c, w) in enumerate(zip(COLUMNS, _WIDTHS, strict=True))
)


def _cells(s: Summary) -> list[str]:
    return [
        s.proxy,
        f"{s.rps_median:,.0f} ({s.rps_min:,.0f}-{s.rps_max:,.0f})",
        f"{s.p50_ms:.2f}",
        f"{s.p99_ms:.2f}",
        f"{s.p999_ms:.2f}",
        _fmt(s.cpu_us_per_req, ".1f"),
        _fmt(s.user_us_per_req, ".1f"),
        _fmt(s.rps_vs_haproxy, ".2f", "x"),
        _fmt(s.cpu_vs_haproxy, ".2f", "x"),
        _fmt(s.p99_vs_haproxy, ".2f", "x"),
        _fmt(s.rps_vs_peer, ".1f", "x"),
        str(s.errors),
    ]


def _row(s: Summary) -> str:
    return " ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(_cells(s), _WIDTHS, strict=True))
    )


def render(
    summaries: Sequence[Summary], scenarios: Sequence[Scenario], reps: int, duration: float
) -> str:
    """A table per scenario, in scenario order."""
    blocks = []
    for scenario in scenarios:
        rows = [s for s in summaries if s.scenario == scenario.key]
        if not rows:
            continue
        title = f"== {scenario.key}: {scenario.title} — {reps} x {duration:g}s =="
        blocks.append("\n".join([title, HEADER, *(_row(s) for s in rows)]))
    return "\n\n".join(blocks)


def markdown(
    summaries: Sequence[Summary],
    scenarios: Sequence[Scenario],
    meta: dict[str, Any],
    scaling_rows: Sequence[dict[str, Any]],
) -> str:
    """The README's Performance table: one row per (scenario, proxy), machine and date first."""
    lines = [
        f"Measured {meta['date']} on {meta['cpu_model']} ({meta['nproc']} CPUs, kernel "
        f"{meta['kernel']}), lbd {meta['versions']['lbd_commit']}, "
        f"{meta['reps']} interleaved repetitions × {meta['duration_s']:g} s; "
        f"CPUs {meta['busy_before_pct']}% busy before the start. "
        "req/s is the median (min–max); ratios are to HAProxy in the same scenario.",
        "",
        "| scenario | " + " | ".join(COLUMNS) + " |",
        "|---|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for scenario in scenarios:
        for s in summaries:
            if s.scenario == scenario.key:
                cells = _cells(s)
                cells[1] = cells[1].replace("-", "–")
                lines.append(f"| {scenario.key} | " + " | ".join(cells) + " |")
    if scaling_rows:
        lines += ["", "| scenario | lbd workers 1 req/s | workers 2 req/s | workers 2 ÷ 1 |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [
            f"| {r['scenario']} | {r['rps_w1']:,.0f} | {r['rps_w2']:,.0f} | {r['ratio']}x |"
            for r in scaling_rows
        ]
        lines += ["", f"Workers: {scaling_rows[0]['note']}; `lbd-w2` runs unpinned, lbd "
                  "(workers 1) pinned to one CPU."]  # fmt: skip
    return "\n".join(lines) + "\n"
