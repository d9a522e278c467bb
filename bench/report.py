"""Summaries of throughput runs: medians across repetitions, ratios to HAProxy, a text table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from throughput import Run, Scenario

REFERENCE = "haproxy"


@dataclass(frozen=True)
class Summary:
    """One proxy in one scenario. Ratios are to HAProxy's medians (None without HAProxy)."""

    scenario: str
    proxy: str
    reps: int
    rps_median: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float | None
    errors: int
    rps_vs_haproxy: float | None
    cpu_vs_haproxy: float | None


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
        cpu_us_per_req=_median_or_none([r.cpu_us_per_req for r in runs]),
        errors=sum(r.socket_errors + r.status_errors for r in runs),
        rps_vs_haproxy=None,
        cpu_vs_haproxy=None,
    )


def summarise(runs: Sequence[Run]) -> list[Summary]:
    """One Summary per (scenario, proxy), in first-seen order, with ratios filled in."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.proxy), []).append(run)
    plain = [_summarise_one(s, p, rs) for (s, p), rs in groups.items()]
    refs = {s.scenario: s for s in plain if s.proxy == REFERENCE}
    out = []
    for s in plain:
        ref = refs.get(s.scenario)
        rps_ref = ref.rps_median if ref else None
        cpu_ref = ref.cpu_us_per_req if ref else None
        out.append(
            replace(
                s,
                rps_vs_haproxy=_ratio(s.rps_median, rps_ref),
                cpu_vs_haproxy=_ratio(s.cpu_us_per_req, cpu_ref),
            )
        )
    return out


def _fmt(value: float | None, pattern: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, pattern) + suffix


HEADER = (
    f"{'proxy':<8} {'req/s median (min-max)':>30} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'CPU µs/req':>11} {'req/s÷haproxy':>14} {'CPU÷haproxy':>12} {'errors':>7}"
)


def _row(s: Summary) -> str:
    spread = f"{s.rps_median:,.0f} ({s.rps_min:,.0f}-{s.rps_max:,.0f})"
    return (
        f"{s.proxy:<8} {spread:>30} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} "
        f"{_fmt(s.cpu_us_per_req, '.1f'):>11} {_fmt(s.rps_vs_haproxy, '.2f', 'x'):>14} "
        f"{_fmt(s.cpu_vs_haproxy, '.2f', 'x'):>12} {s.errors:>7}"
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
        title = f"== {scenario.title} — GET {scenario.path}, {reps} x {duration:g}s =="
        blocks.append("\n".join([title, HEADER, *(_row(s) for s in rows)]))
    return "\n\n".join(blocks)
