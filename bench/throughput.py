"""Throughput scenarios: wrk against every endpoint of the scenario's profile, repetitions
interleaved.

Rules: order is `for rep: for scenario: for proxy`, so a noisy moment on the machine hurts every
proxy in a scenario about equally instead of all the repetitions of one proxy. A scenario's wrk
Lua `setup` (method, body, headers, a path rotation) is the only thing that differs between
scenarios of one profile; the done hook that reports numbers is shared (wrk.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import wrk
from configs import POST_BYTES
from lab import Endpoint, Placement
from procs import cpu_times


def rotation(weighted: Sequence[tuple[str, int]]) -> str:
    """Lua `request` cycling through paths, each repeated by its weight (deterministic mix)."""
    paths = [p for p, w in weighted for _ in range(w)]
    table = ", ".join(f'"{p}"' for p in paths)
    return f"""local paths = {{{table}}}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format(nil, paths[i])
end
"""


# The EHR mix, in twentieths: a page view fetches more assets than it makes module calls. The
# demo's modules (conf/demo.yaml); conf/demo.yaml sets no latencies, so the mocks add none.
EHR_MIX: tuple[tuple[str, int], ...] = (
    ("/static/app.css", 4),
    ("/static/logo.png", 4),
    ("/accueil/", 4),
    ("/rendez-vous/agenda?jour=2026-11-23", 3),
    ("/dmu/patient/dossier", 3),
    ("/comptes-rendus/liste", 2),
)
# `allon`: the same modules against the nginx backend's 200 B module pages.
ALLON_MIX: tuple[tuple[str, int], ...] = tuple((f"/{p.split('/')[1]}/bench", w) for p, w in EHR_MIX)

POST_SETUP = f"""wrk.method = "POST"
wrk.body = string.rep("p", {POST_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str  # the URL wrk is given; a `setup` with a `request` function may override it
    connections: int
    profile: str = "plain"
    setup: str = ""  # wrk Lua run before the done hook
    keep_alive: bool = True


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("200B-c50", "keep-alive, 200 B body, 50 connections", "/200b", 50),
    Scenario("200B-c200", "keep-alive, 200 B body, 200 connections", "/200b", 200),
    Scenario("200B-c500", "keep-alive, 200 B body, 500 connections", "/200b", 500),
    Scenario("16KiB-c50", "keep-alive, 16 KiB body, 50 connections", "/16k", 50),
    Scenario("1MiB-c50", "keep-alive, 1 MiB body, 50 connections", "/1m", 50),
    Scenario(
        "conn-close",
        "new TCP connection per request (Connection: close), 50 clients",
        "/200b",
        50,
        setup='wrk.headers["Connection"] = "close"\n',
        keep_alive=False,
    ),
    Scenario(
        "post-64KiB", "keep-alive POST, 64 KiB body, 50 connections", "/post", 50, setup=POST_SETUP
    ),
    Scenario(
        "ehr-mix",
        "EHR mix over three mock servers (`lbd mock`), 50 connections",
        "/accueil/",
        50,
        profile="ehr",
        setup=rotation(EHR_MIX),
    ),
    Scenario(
        "all-on",
        "URL checks + 5 modules + routing + access log to a file, 50 connections",
        "/accueil/bench",
        50,
        profile="allon",
        setup=rotation(ALLON_MIX),
    ),
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
    # The user-space part of cpu_us_per_req (the rest is the kernel); absent in older results.
    user_us_per_req: float | None = None


def scripts(directory: Path, scenarios: Sequence[Scenario]) -> dict[str, Path]:
    """One wrk Lua file per scenario, and the bare done hook under "done" (warm-ups)."""
    out = {s.key: wrk.write_script(directory, f"wrk-{s.key}", s.setup) for s in scenarios}
    out["done"] = wrk.write_script(directory)
    return out


def measure(
    endpoint: Endpoint,
    scenario: Scenario,
    rep: int,
    duration: float,
    script: Path,
    load_cpu: int | None,
) -> Run:
    """Run wrk once and charge the proxy's CPU time (whole process tree) to its requests."""
    before = cpu_times(endpoint.pid) if endpoint.pid else None
    result = wrk.run(endpoint.url(scenario.path), scenario.connections, duration, script, load_cpu)
    cpu = user = per_req = user_per_req = None
    if endpoint.pid and before is not None:
        after = cpu_times(endpoint.pid)
        user = after[0] - before[0]
        cpu = user + after[1] - before[1]
        if result.requests:
            per_req = cpu / result.requests * 1e6
            user_per_req = user / result.requests * 1e6
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
        user_us_per_req=round(user_per_req, 2) if user_per_req is not None else None,
    )


def warm_up(endpoints: Sequence[Endpoint], scripts: dict[str, Path], placement: Placement) -> None:
    """One short run per endpoint so pools, caches and page faults are paid before measuring."""
    for endpoint in endpoints:
        path = {"plain": "/200b", "allon": "/dmu/bench", "ehr": "/dmu/bench"}[endpoint.profile]
        wrk.run(endpoint.url(path), 50, 1, scripts["done"], placement.load_cpu)


def run_all(
    endpoints: Sequence[Endpoint],
    scenarios: Sequence[Scenario],
    reps: int,
    duration: float,
    scripts: dict[str, Path],
    placement: Placement,
    progress: Callable[[Run], None],
) -> list[Run]:
    runs: list[Run] = []
    for rep in range(1, reps + 1):
        for scenario in scenarios:
            for endpoint in endpoints:
                if endpoint.profile != scenario.profile:
                    continue
                script = scripts[scenario.key]
                run = measure(endpoint, scenario, rep, duration, script, placement.load_cpu)
                runs.append(run)
                progress(run)
                time.sleep(0.3)  # let sockets and the scheduler settle between runs
    return runs
