"""Throughput scenarios: wrk against every endpoint, repetitions interleaved.

Order is `for rep: for scenario: for proxy`, so a noisy moment on the machine hurts every proxy
in a scenario about equally instead of all the repetitions of one proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import wrk
from lab import Endpoint, Placement
from procs import cpu_seconds


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    connections: int


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("200B-c50", "keep-alive, 200 B body, 50 connections", "/200b", 50),
    Scenario("200B-c200", "keep-alive, 200 B body, 200 connections", "/200b", 200),
    Scenario("16KiB-c50", "keep-alive, 16 KiB body, 50 connections", "/16k", 50),
    Scenario("1MiB-c50", "keep-alive, 1 MiB body, 50 connections", "/1m", 50),
)


@dataclass(frozen=True)
class Run:
    """One wrk run against one endpoint; cpu_* are None for "direct" (no proxy to measure)."""

    proxy: str
    scenario: str
    rep: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    socket_errors: int
    status_errors: int
    cpu_seconds: float | None
    cpu_us_per_req: float | None


def measure(
    endpoint: Endpoint,
    scenario: Scenario,
    rep: int,
    duration: float,
    script: Path,
    load_cpu: int | None,
) -> Run:
    """Run wrk once and charge the proxy's CPU time (whole process tree) to its requests."""
    before = cpu_seconds(endpoint.pid) if endpoint.pid else None
    result = wrk.run(endpoint.url(scenario.path), scenario.connections, duration, script, load_cpu)
    cpu = cpu_seconds(endpoint.pid) - before if endpoint.pid and before is not None else None
    per_req = cpu / result.requests * 1e6 if cpu is not None and result.requests else None
    return Run(
        proxy=endpoint.name,
        scenario=scenario.key,
        rep=rep,
        requests=result.requests,
        seconds=round(result.seconds, 3),
        rps=round(result.rps, 1),
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        p999_ms=result.p999_ms,
        socket_errors=result.socket_errors,
        status_errors=result.status_errors,
        cpu_seconds=cpu,
        cpu_us_per_req=round(per_req, 2) if per_req is not None else None,
    )


def warm_up(endpoints: Sequence[Endpoint], script: Path, placement: Placement) -> None:
    """One short run per endpoint so pools, caches and page faults are paid before measuring."""
    for endpoint in endpoints:
        wrk.run(endpoint.url("/200b"), 50, 1, script, placement.load_cpu)


def run_all(
    endpoints: Sequence[Endpoint],
    scenarios: Sequence[Scenario],
    reps: int,
    duration: float,
    script: Path,
    placement: Placement,
    progress: Callable[[Run], None],
) -> list[Run]:
    runs: list[Run] = []
    for rep in range(1, reps + 1):
        for scenario in scenarios:
            for endpoint in endpoints:
                run = measure(endpoint, scenario, rep, duration, script, placement.load_cpu)
                runs.append(run)
                progress(run)
                time.sleep(0.3)  # let sockets and the scheduler settle between runs
    return runs
