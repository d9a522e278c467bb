"""One plain, JSON-able picture of every counter: what /stats.json, /stats and /stats.csv show.

Rules: `snapshot()` reads `holder.runtime` once (the caller passes that one Runtime) and copies
plain numbers out; it never writes to a counter. Everything in the result is a str, int, float,
bool, list or dict, so `json.dumps` takes it as is. Latencies are in seconds; quantiles are the
upper bound of the histogram bucket that holds them (Histogram.quantile), as HAProxy's page shows.

Request rates need two readings over time. `RateTracker` remembers the previous total per
object; whoever serves snapshots owns one (the stats server does), so there is no module-level
state and two listeners never disturb each other's windows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import TypedDict

from lbd import __version__
from lbd.inspect.store import EntryJSON
from lbd.runtime import BackendRuntime, FrontendRuntime, Runtime
from lbd.state import ServerState
from lbd.stats.counters import (
    CLASS_LABELS,
    BackendCounters,
    Histogram,
    TrafficCounters,
)

# An object's identity for rates: ("frontend", fe), ("module", fe, module), ("backend", be),
# ("server", be, server). Names are unique within their kind, so keys never collide.
RateKey = tuple[str, ...]

# Shown when a class of responses has no slot: always the same six keys, 1xx first.
CODE_ORDER = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


class Latency(TypedDict):
    count: int
    mean: float
    p50: float
    p95: float
    p99: float


class Traffic(TypedDict):
    """What every frontend, module, backend and server reports."""

    name: str
    requests: int
    responses: dict[str, int]  # CODE_ORDER → count
    bytes_in: int
    bytes_out: int
    cur_requests: int
    max_requests: int
    req_rate: float  # requests per second between the last two readings (0.0 on the first)
    latency: Latency


class Timings(TypedDict):
    """The server-side phases of a request, apart from the total (`latency`)."""

    header_time: Latency  # sent to a server → its response head (HAProxy's Tr)
    connect_time: Latency  # new server connections only (pooled ones cost nothing)
    queue_time: Latency  # requests that waited for a server slot (maxconn) only


class ModuleServerStats(TypedDict):
    """One module's traffic on one server (the pairs that have carried a request)."""

    backend: str
    server: str
    requests: int  # finished requests of this module answered by this server
    share: float  # of this module's requests answered by any server, 0.0 … 1.0
    responses: dict[str, int]  # CODE_ORDER → count
    latency: Latency


class ModuleStats(Traffic, Timings):
    error_rate: float  # share of answered requests that got a 5xx, 0.0 … 1.0
    servers: list[ModuleServerStats]  # in configuration order


class FrontendStats(Traffic):
    conn_cur: int
    conn_total: int
    denied: int
    malformed: dict[str, int]  # reason → count, sorted by reason
    malformed_total: int
    # The capture store: per (reason, module) counts, actions, first/last seen and the last
    # samples, most recent first. Excerpts are masked (no query value, cookie or credential).
    captures: list[EntryJSON]
    captures_overflow: int  # records that found the capture store full
    modules: list[ModuleStats]


class ErrorCounts(TypedDict):
    conn_errors: int
    response_errors: int
    retries: int
    redispatches: int
    no_server: int


class ServerStats(Traffic, ErrorCounts):
    address: str
    status: str  # UP | DOWN | DRAIN | MAINT
    admin: str  # ready | drain | maint (the operator's state)
    up: bool  # the health checks' state
    backup: bool
    weight: int  # effective weight (the operator may have changed it)
    maxconn: int  # 0: unlimited
    inflight: int  # requests on this server now (HAProxy's scur)
    connections: int  # new TCP connections opened
    idle_connections: int  # pooled keep-alive connections waiting for reuse
    connect_time: Latency
    header_time: Latency
    checked: bool  # has a health check (the check counters stay 0 without one)
    check_failures: int  # failed checks while not DOWN (HAProxy's chkfail)
    check_downs: int  # UP -> DOWN transitions (chkdown)
    downtime: float  # seconds spent DOWN, the current down period included


class StickTableStats(TypedDict):
    on: str  # src | cookie
    entries: int
    size: int
    evicted: int  # dropped because the table was full (least recently used first)
    expired: int  # dropped after `expire` without use


class BackendStats(Traffic, ErrorCounts, Timings):
    queue_cur: int  # requests waiting for a server slot now
    queue_max: int  # highest queue length seen
    queue_timeouts: int  # requests answered 503 after timeouts.queue in the queue
    balance: str
    status: str  # UP while at least one server is usable, else DOWN
    weight: int  # sum of the usable active servers' weights
    active_servers: int  # usable non-backup servers
    backup_servers: int  # usable backup servers
    # Session persistence (only for backends with `sticky`): outcome → requests, and the table.
    persistence: dict[str, int] | None
    stick_table: StickTableStats | None
    servers: list[ServerStats]


class Info(TypedDict):
    version: str
    pid: int
    started_at: float  # Unix time
    uptime_seconds: float
    generation: int  # the runtime's reload generation (1 at start)


class Snapshot(TypedDict):
    info: Info
    frontends: list[FrontendStats]
    backends: list[BackendStats]


class RateTracker:
    """Per-object request rates from the difference between two readings of a total.

    A reading closer than `min_interval` to the previous baseline returns the last rate and
    keeps the baseline, so a page refreshed twice in a row does not divide by a few ms. A total
    that went down (the object was re-created by a reload) restarts its baseline. Objects absent
    from a reading are forgotten, so the tracker never outgrows the configuration.
    """

    __slots__ = ("_base", "_min_interval", "_rates")

    def __init__(self, min_interval: float = 1.0) -> None:
        self._min_interval = min_interval
        self._base: dict[RateKey, tuple[float, int]] = {}  # key → (time, total) of the baseline
        self._rates: dict[RateKey, float] = {}

    def update(self, totals: Mapping[RateKey, int], now: float) -> dict[RateKey, float]:
        """Rates for every key of `totals` (monotonic `now` in seconds)."""
        rates = {key: self._one(key, total, now) for key, total in totals.items()}
        for key in self._base.keys() - totals.keys():
            del self._base[key]
            self._rates.pop(key, None)
        return rates

    def _one(self, key: RateKey, total: int, now: float) -> float:
        base = self._base.get(key)
        if base is None or total < base[1]:
            self._base[key] = (now, total)
            self._rates[key] = 0.0
            return 0.0
        elapsed = now - base[0]
        if elapsed >= self._min_interval:
            self._rates[key] = (total - base[1]) / elapsed
            self._base[key] = (now, total)
        return self._rates.get(key, 0.0)


def snapshot(
    runtime: Runtime,
    started_at: float,
    tracker: RateTracker | None = None,
    *,
    now: float | None = None,
) -> Snapshot:
    """Everything about `runtime` as plain data. `started_at` is the process start (Unix time);
    without a tracker every rate is 0.0; `now` (monotonic) is for tests."""
    totals = dict(_request_totals(runtime))
    rates = tracker.update(totals, time.monotonic() if now is None else now) if tracker else {}
    return {
        "info": {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": started_at,
            "uptime_seconds": round(max(0.0, time.time() - started_at), 3),
            "generation": runtime.generation,
        },
        "frontends": [_frontend(runtime, fe, rates) for fe in runtime.frontends.values()],
        "backends": [_backend(be, rates) for be in runtime.backends.values()],
    }


def _request_totals(runtime: Runtime) -> Iterator[tuple[RateKey, int]]:
    for fe in runtime.frontends.values():
        yield ("frontend", fe.name), fe.counters.requests
        for name, mc in fe.module_counters.items():
            yield ("module", fe.name, name), mc.requests
    for be in runtime.backends.values():
        yield ("backend", be.name), be.counters.requests
        for s in be.servers:
            yield ("server", be.name, s.name), s.counters.requests


# --- builders, one per kind of object -------------------------------------------------------------


def latency(h: Histogram) -> Latency:
    return {
        "count": h.count,
        "mean": h.sum / h.count if h.count else 0.0,
        "p50": h.quantile(0.50),
        "p95": h.quantile(0.95),
        "p99": h.quantile(0.99),
    }


def responses(c: TrafficCounters) -> dict[str, int]:
    by_label = dict(zip(CLASS_LABELS, c.responses, strict=True))
    return {code: by_label[code] for code in CODE_ORDER}


def _traffic(name: str, c: TrafficCounters, rate: float) -> Traffic:
    return {
        "name": name,
        "requests": c.requests,
        "responses": responses(c),
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "cur_requests": c.cur_requests,
        "max_requests": c.max_requests,
        "req_rate": round(rate, 3),
        "latency": latency(c.response_time),
    }


def _errors(c: BackendCounters) -> ErrorCounts:
    return {
        "conn_errors": c.conn_errors,
        "response_errors": c.response_errors,
        "retries": c.retries,
        "redispatches": c.redispatches,
        "no_server": c.no_server,
    }


def _timings(c: TrafficCounters) -> Timings:
    return {
        "header_time": latency(c.header_time),
        "connect_time": latency(c.connect_time),
        "queue_time": latency(c.queue_time),
    }


def module_servers(
    runtime: Runtime, fe: FrontendRuntime, module: str
) -> list[tuple[ServerState, TrafficCounters]]:
    """The servers that answered `module`'s requests, with the pair's counters, in configuration
    order. Pairs of servers no longer configured (kept across a reload) are left out."""
    table = fe.module_servers
    pairs = ((s, table.get((module, s.backend_name, s.name))) for s in runtime.servers.values())
    return [(s, c) for s, c in pairs if c is not None]


def _module_server(s: ServerState, c: TrafficCounters, total: int) -> ModuleServerStats:
    return {
        "backend": s.backend_name,
        "server": s.name,
        "requests": c.requests,
        "share": c.requests / total if total else 0.0,
        "responses": responses(c),
        "latency": latency(c.response_time),
    }


def _module(
    runtime: Runtime,
    fe: FrontendRuntime,
    name: str,
    c: TrafficCounters,
    rates: dict[RateKey, float],
) -> ModuleStats:
    answered = sum(c.responses)
    err = c.responses[CLASS_LABELS.index("5xx")] / answered if answered else 0.0
    pairs = module_servers(runtime, fe, name)
    total = sum(pc.requests for _, pc in pairs)
    return {
        **_traffic(name, c, rates.get(("module", fe.name, name), 0.0)),
        **_timings(c),
        "error_rate": err,
        "servers": [_module_server(s, pc, total) for s, pc in pairs],
    }


def _frontend(runtime: Runtime, fe: FrontendRuntime, rates: dict[RateKey, float]) -> FrontendStats:
    c = fe.counters
    malformed = dict(sorted(c.malformed.items()))
    return {
        **_traffic(fe.name, c, rates.get(("frontend", fe.name), 0.0)),
        "conn_cur": c.conn_cur,
        "conn_total": c.conn_total,
        "denied": c.denied,
        "malformed": malformed,
        "malformed_total": sum(malformed.values()),
        "captures": fe.captures.to_json(),
        "captures_overflow": fe.captures.overflow,
        "modules": [_module(runtime, fe, n, mc, rates) for n, mc in fe.module_counters.items()],
    }


def _server(s: ServerState, rates: dict[RateKey, float]) -> ServerStats:
    c = s.counters
    return {
        **_traffic(s.name, c, rates.get(("server", s.backend_name, s.name), 0.0)),
        **_errors(c),
        "address": str(s.config.address),
        "status": s.status(),
        "admin": s.admin,
        "up": s.up,
        "backup": s.config.backup,
        "weight": s.weight,
        "maxconn": s.config.maxconn,
        "inflight": s.inflight,
        "connections": c.connections,
        "idle_connections": s.pool.idle_count,
        "connect_time": latency(c.connect_time),
        "header_time": latency(c.header_time),
        "checked": s.health.checked,
        "check_failures": s.health.check_failures,
        "check_downs": s.health.downs,
        "downtime": round(s.health.downtime(), 3),
    }


def _backend(be: BackendRuntime, rates: dict[RateKey, float]) -> BackendStats:
    usable = [s for s in be.servers if s.usable()]
    active = [s for s in usable if not s.config.backup]
    return {
        **_traffic(be.name, be.counters, rates.get(("backend", be.name), 0.0)),
        **_errors(be.counters),
        **_timings(be.counters),
        "queue_cur": be.counters.queue_cur,
        "queue_max": be.counters.queue_max,
        "queue_timeouts": be.counters.queue_timeouts,
        "balance": be.config.balance.algorithm,
        "status": "UP" if usable else "DOWN",
        "weight": sum(s.weight for s in active),
        "active_servers": len(active),
        "backup_servers": len(usable) - len(active),
        "persistence": persistence(be.counters) if be.sticky is not None else None,
        "stick_table": _stick_table(be),
        "servers": [_server(s, rates) for s in be.servers],
    }


def persistence(c: BackendCounters) -> dict[str, int]:
    """Persistence outcomes by name (HAProxy's cookie letters N, V, D, I, E/O)."""
    return {
        "new": c.persist_new,
        "valid": c.persist_valid,
        "redispatched": c.persist_redispatched,
        "invalid": c.persist_invalid,
        "expired": c.persist_expired,
    }


def _stick_table(be: BackendRuntime) -> StickTableStats | None:
    sticky = be.config.sticky
    if be.sweeper is None or sticky is None or sticky.table is None:
        return None
    t = be.sweeper.table
    return {
        "on": sticky.table.on,
        "entries": len(t),
        "size": t.size,
        "evicted": t.evicted,
        "expired": t.expired,
    }
