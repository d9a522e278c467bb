"""Prometheus exposition: one custom collector that reads the plain counters at scrape time.

Rules (after prometheus-client's custom-collector pattern): the hot path only does `x += 1` on
plain integers (counters.py); `LbdCollector.collect()` reads `holder.runtime` once per scrape and
builds fresh metric families from it, so a reload is picked up by the next scrape and nothing
here takes a lock. The registry is private to the stats server: the global REGISTRY would mix
in whatever else the process imports and survive across tests.

Names follow HAProxy's exporter (`haproxy_server_http_responses_total{proxy,server,code}` →
`lbd_server_http_responses_total{backend,server,code}`) and Prometheus conventions: counters end
in `_total`, units are in the name (`_bytes_`, `_seconds`), `code` is the response class
(`1xx`…`5xx`, `other`).

The access log's delivery counters (`lbd_access_log_*`) come from the access logs open in this
process (lbd.logs.access.open_access_logs); they are absent with `log.access: off`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lbd import __version__
from lbd.logs.access import AccessLog, open_access_logs
from lbd.runtime import BackendRuntime, Runtime, RuntimeHolder
from lbd.state import ServerState
from lbd.stats.counters import (
    CLASS_LABELS,
    LATENCY_BUCKETS,
    BackendCounters,
    Histogram,
    TrafficCounters,
)
from lbd.stats.snapshot import CODE_ORDER, module_servers, persistence

SERVER_STATES = ("UP", "DOWN", "DRAIN", "MAINT")
ADMIN_STATES = ("ready", "drain", "maint")

# The `le` label of every bucket, formatted once ("0.001" … "30.0", as prometheus-client's own
# histograms print these bounds).
_BUCKET_LABELS = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")

# `code` label → slot in TrafficCounters.responses, listed 1xx … 5xx, other.
_CODE_SLOTS = tuple((code, CLASS_LABELS.index(code)) for code in CODE_ORDER)

# One labelled object: its label values and its counters.
Row = tuple[Sequence[str], TrafficCounters]
ErrorRow = tuple[Sequence[str], BackendCounters]


class LbdCollector(Collector):
    """Builds every `lbd_*` family from the runtime the holder points at when scraped."""

    def __init__(self, holder: RuntimeHolder, started_at: float) -> None:
        self._holder = holder
        self._started_at = started_at

    def describe(self) -> Iterable[Metric]:
        # Families depend on the configuration at scrape time: nothing to pre-declare.
        return []

    def collect(self) -> Iterator[Metric]:
        runtime = self._holder.runtime  # once: a reload mid-scrape must not mix two configs
        yield from _process(runtime, self._started_at)
        yield from _frontends(runtime)
        yield from _modules(runtime)
        yield from _backends(runtime)
        yield from _servers(runtime)
        yield from _access_logs(open_access_logs())


def make_registry(holder: RuntimeHolder, started_at: float) -> CollectorRegistry:
    """A private registry holding only the lbd collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LbdCollector(holder, started_at))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition; serve it with `prometheus_client.CONTENT_TYPE_LATEST`."""
    return generate_latest(registry)


# --- family helpers -------------------------------------------------------------------------------


_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


def _filled(family: _Family, rows: Iterable[tuple[Sequence[str], float]]) -> _Family:
    for values, value in rows:
        family.add_metric(values, value)
    return family


def counter(
    name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily:
    return _filled(CounterMetricFamily(name, doc, labels=labels), rows)


def gauge(
    name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    return _filled(GaugeMetricFamily(name, doc, labels=labels), rows)


def histogram(
    name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in rows:
        family.add_metric(values, cumulative_buckets(h), h.sum)
    return family


def cumulative_buckets(h: Histogram) -> list[tuple[str, float]]:
    """Histogram.counts holds per-bucket counts; Prometheus wants running totals (le)."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(_BUCKET_LABELS, h.counts, strict=True):
        running += n
        buckets.append((le, running))
    return buckets


def _by_code(rows: Iterable[Row]) -> Iterator[tuple[Sequence[str], float]]:
    for values, c in rows:
        for label, slot in _CODE_SLOTS:
            yield (*values, label), c.responses[slot]


def _traffic(
    prefix: str, what: str, labels: Sequence[str], rows: Sequence[Row]
) -> Iterator[Metric]:
    """The families every frontend, module, backend and server has."""
    yield counter(
        f"{prefix}_http_requests_total",
        f"HTTP requests received by the {what}.",
        labels,
        ((v, c.requests) for v, c in rows),
    )
    yield counter(
        f"{prefix}_http_responses_total",
        f"HTTP responses sent by the {what}, by status class.",
        (*labels, "code"),
        _by_code(rows),
    )
    yield counter(
        f"{prefix}_bytes_in_total",
        f"Request body bytes received by the {what}.",
        labels,
        ((v, c.bytes_in) for v, c in rows),
    )
    yield counter(
        f"{prefix}_bytes_out_total",
        f"Response bytes sent by the {what}.",
        labels,
        ((v, c.bytes_out) for v, c in rows),
    )
    yield histogram(
        f"{prefix}_response_time_seconds",
        f"Time from request headers to the end of the response, by {what}.",
        labels,
        ((v, c.response_time) for v, c in rows),
    )


def _timings(
    prefix: str, what: str, labels: Sequence[str], rows: Sequence[Row], *, queue: bool
) -> Iterator[Metric]:
    """The server-side phases: response head, connect and (for modules and backends, as lbd
    queues per backend) queue time."""
    yield histogram(
        f"{prefix}_header_time_seconds",
        f"Time from sending a request to a server to its response head, by {what}.",
        labels,
        ((v, c.header_time) for v, c in rows),
    )
    yield histogram(
        f"{prefix}_connect_time_seconds",
        f"Time to open a new TCP connection to a server (pooled ones are not counted), by {what}.",
        labels,
        ((v, c.connect_time) for v, c in rows),
    )
    if queue:
        yield histogram(
            f"{prefix}_queue_time_seconds",
            f"Time spent waiting for a server slot (requests that waited only), by {what}.",
            labels,
            ((v, c.queue_time) for v, c in rows),
        )


def _concurrency(
    prefix: str, what: str, labels: Sequence[str], rows: Sequence[Row]
) -> Iterator[Metric]:
    yield gauge(
        f"{prefix}_current_requests",
        f"Requests in progress on the {what}.",
        labels,
        ((v, c.cur_requests) for v, c in rows),
    )
    yield gauge(
        f"{prefix}_max_requests",
        f"Highest number of requests in progress at once on the {what}.",
        labels,
        ((v, c.max_requests) for v, c in rows),
    )


# --- families by object ---------------------------------------------------------------------------


def _process(runtime: Runtime, started_at: float) -> Iterator[Metric]:
    yield gauge(
        "lbd_build_info", "lbd build; the value is always 1.", ["version"], [([__version__], 1)]
    )
    yield gauge(
        "lbd_process_start_time_seconds",
        "Start time of the process since the Unix epoch.",
        [],
        [([], started_at)],
    )
    yield gauge(
        "lbd_config_generation",
        "Configuration generation: 1 at start, +1 per reload.",
        [],
        [([], runtime.generation)],
    )


def _frontends(runtime: Runtime) -> Iterator[Metric]:
    labels = ["frontend"]
    fes = list(runtime.frontends.values())
    rows: list[Row] = [([fe.name], fe.counters) for fe in fes]
    yield from _traffic("lbd_frontend", "frontend", labels, rows)
    yield from _concurrency("lbd_frontend", "frontend", labels, rows)
    yield gauge(
        "lbd_frontend_current_connections",
        "Client connections open now.",
        labels,
        (([fe.name], fe.counters.conn_cur) for fe in fes),
    )
    yield counter(
        "lbd_frontend_connections_total",
        "Client connections accepted.",
        labels,
        (([fe.name], fe.counters.conn_total) for fe in fes),
    )
    yield counter(
        "lbd_frontend_requests_denied_total",
        "Requests denied by a rule.",
        labels,
        (([fe.name], fe.counters.denied) for fe in fes),
    )
    yield counter(
        "lbd_frontend_denied_connections_total",
        "Connections closed at accept by the frontend's allow/deny source lists.",
        labels,
        (([fe.name], fe.counters.denied_connections) for fe in fes),
    )
    yield counter(
        "lbd_frontend_limited_requests_total",
        "Requests answered 429 by a per-source limit, by reason (rate, connections).",
        ["frontend", "reason"],
        (
            row
            for fe in fes
            for row in (
                ([fe.name, "rate"], fe.counters.limited_rate),
                ([fe.name, "connections"], fe.counters.limited_connections),
            )
        ),
    )
    yield counter(
        "lbd_frontend_maxconn_pauses_total",
        "Times the frontend stopped accepting because it had maxconn connections open.",
        labels,
        (([fe.name], fe.counters.maxconn_pauses) for fe in fes),
    )
    yield counter(
        "lbd_frontend_maxconn_refused_total",
        "Connections accepted past maxconn (before accepting paused) and closed at once.",
        labels,
        (([fe.name], fe.counters.maxconn_refused) for fe in fes),
    )
    yield counter(
        "lbd_frontend_malformed_requests_total",
        "Requests refused before routing (bad syntax, limits, smuggling risks), by reason.",
        ["frontend", "reason"],
        (
            ([fe.name, reason], n)
            for fe in fes
            for reason, n in sorted(fe.counters.malformed.items())
        ),
    )


def _modules(runtime: Runtime) -> Iterator[Metric]:
    rows: list[Row] = [
        ([fe.name, name], c)
        for fe in runtime.frontends.values()
        for name, c in fe.module_counters.items()
    ]
    what = "application module"
    yield from _traffic("lbd_module", what, ["frontend", "module"], rows)
    yield from _timings("lbd_module", what, ["frontend", "module"], rows, queue=True)
    pairs: list[Row] = [
        ([fe.name, module, s.backend_name, s.name], c)
        for fe in runtime.frontends.values()
        for module in fe.module_counters
        for s, c in module_servers(runtime, fe, module)
    ]
    labels = ["frontend", "module", "backend", "server"]
    yield counter(
        "lbd_module_server_http_requests_total",
        "HTTP requests of the application module answered by the server.",
        labels,
        ((v, c.requests) for v, c in pairs),
    )
    yield counter(
        "lbd_module_server_http_responses_total",
        "HTTP responses to the application module's requests from the server, by status class.",
        (*labels, "code"),
        _by_code(pairs),
    )


def _backends(runtime: Runtime) -> Iterator[Metric]:
    labels = ["backend"]
    bes = list(runtime.backends.values())
    rows: list[Row] = [([be.name], be.counters) for be in bes]
    yield from _traffic("lbd_backend", "backend", labels, rows)
    yield from _concurrency("lbd_backend", "backend", labels, rows)
    yield from _timings("lbd_backend", "backend", labels, rows, queue=True)
    yield gauge(
        "lbd_backend_current_queue",
        "Requests waiting for a server slot now.",
        labels,
        (([be.name], be.counters.queue_cur) for be in bes),
    )
    yield gauge(
        "lbd_backend_max_queue",
        "Highest number of requests waiting for a server slot at once.",
        labels,
        (([be.name], be.counters.queue_max) for be in bes),
    )
    yield counter(
        "lbd_backend_queue_timeouts_total",
        "Requests answered 503 after waiting timeouts.queue for a server slot.",
        labels,
        (([be.name], be.counters.queue_timeouts) for be in bes),
    )
    yield from _errors("lbd_backend", "backend", labels, [([be.name], be.counters) for be in bes])
    yield counter(
        "lbd_backend_no_server_total",
        "Requests answered 503: no usable server.",
        labels,
        (([be.name], be.counters.no_server) for be in bes),
    )
    usable = [(be, [s for s in be.servers if s.usable()]) for be in bes]
    yield gauge(
        "lbd_backend_active_servers",
        "Usable (non-backup) servers.",
        labels,
        (([be.name], sum(not s.config.backup for s in ok)) for be, ok in usable),
    )
    yield gauge(
        "lbd_backend_backup_servers",
        "Usable backup servers.",
        labels,
        (([be.name], sum(s.config.backup for s in ok)) for be, ok in usable),
    )
    weights = (([be.name], sum(s.weight for s in ok if not s.config.backup)) for be, ok in usable)
    yield gauge("lbd_backend_weight", "Sum of the usable active servers' weights.", labels, weights)
    yield from _persistence(bes)


def _persistence(bes: list[BackendRuntime]) -> Iterator[Metric]:
    """Session persistence, for backends with `sticky` (HAProxy's cookie outcomes) and stick
    tables."""
    sticky = [be for be in bes if be.sticky is not None]
    yield counter(
        "lbd_backend_persistence_total",
        "Requests by persistence outcome: new, valid, redispatched (server down), invalid, "
        "expired.",
        ["backend", "outcome"],
        (([be.name, k], n) for be in sticky for k, n in persistence(be.counters).items()),
    )
    tables = [(be.name, be.sweeper.table) for be in bes if be.sweeper is not None]
    yield gauge(
        "lbd_stick_table_entries",
        "Entries in the stick table.",
        ["backend"],
        (([name], len(t)) for name, t in tables),
    )
    yield gauge(
        "lbd_stick_table_size",
        "Capacity of the stick table.",
        ["backend"],
        (([name], t.size) for name, t in tables),
    )
    yield counter(
        "lbd_stick_table_evictions_total",
        "Entries dropped because the table was full (least recently used first).",
        ["backend"],
        (([name], t.evicted) for name, t in tables),
    )
    yield counter(
        "lbd_stick_table_expirations_total",
        "Entries dropped after `expire` without use.",
        ["backend"],
        (([name], t.expired) for name, t in tables),
    )


# Errors and retries, counted alike on backends and servers (BackendCounters fields).
_ERROR_FAMILIES: tuple[tuple[str, str, Callable[[BackendCounters], int]], ...] = (
    ("connection_errors_total", "Failed connection attempts to the {}.", lambda c: c.conn_errors),
    (
        "response_errors_total",
        "Responses from the {} cut short or invalid.",
        lambda c: c.response_errors,
    ),
    ("retry_warnings_total", "Connection retries on the {}.", lambda c: c.retries),
    (
        "redispatch_warnings_total",
        "Retries moved to another server, on the {}.",
        lambda c: c.redispatches,
    ),
)


def _errors(
    prefix: str, what: str, labels: Sequence[str], rows: Sequence[ErrorRow]
) -> Iterator[Metric]:
    for suffix, doc, read in _ERROR_FAMILIES:
        values = ((v, read(c)) for v, c in rows)
        yield counter(f"{prefix}_{suffix}", doc.format(what), labels, values)


def _servers(runtime: Runtime) -> Iterator[Metric]:
    labels = ["backend", "server"]
    servers = [s for be in runtime.backends.values() for s in be.servers]
    rows: list[Row] = [([s.backend_name, s.name], s.counters) for s in servers]
    yield from _traffic("lbd_server", "server", labels, rows)
    yield from _concurrency("lbd_server", "server", labels, rows)
    yield from _timings("lbd_server", "server", labels, rows, queue=False)
    yield from _errors(
        "lbd_server", "server", labels, [([s.backend_name, s.name], s.counters) for s in servers]
    )
    yield from _server_state(labels, servers)
    yield counter(
        "lbd_server_connections_total",
        "New TCP connections opened to the server.",
        labels,
        (([s.backend_name, s.name], s.counters.connections) for s in servers),
    )
    yield gauge(
        "lbd_server_idle_connections",
        "Idle keep-alive connections pooled for reuse.",
        labels,
        (([s.backend_name, s.name], s.pool.idle_count) for s in servers),
    )


def _server_state(labels: Sequence[str], servers: Sequence[ServerState]) -> Iterator[Metric]:
    yield gauge(
        "lbd_server_status",
        "Server status (1 for the current one): UP, DOWN, DRAIN or MAINT.",
        (*labels, "state"),
        _one_hot(servers, SERVER_STATES, ServerState.status),
    )
    yield gauge(
        "lbd_server_admin_state",
        "Operator state (1 for the current one): ready, drain or maint.",
        (*labels, "state"),
        _one_hot(servers, ADMIN_STATES, lambda s: s.admin),
    )
    yield gauge(
        "lbd_server_check_up",
        "1 when health checks see the server up, else 0.",
        labels,
        (([s.backend_name, s.name], int(s.up)) for s in servers),
    )
    yield counter(
        "lbd_server_check_failures_total",
        "Failed health checks while the server was not DOWN (HAProxy's chkfail).",
        labels,
        (([s.backend_name, s.name], s.health.check_failures) for s in servers),
    )
    yield counter(
        "lbd_server_check_down_transitions_total",
        "UP to DOWN transitions of the server (HAProxy's chkdown).",
        labels,
        (([s.backend_name, s.name], s.health.downs) for s in servers),
    )
    yield counter(
        "lbd_server_downtime_seconds_total",
        "Time the server has spent DOWN, the current down period included.",
        labels,
        (([s.backend_name, s.name], s.health.downtime()) for s in servers),
    )
    yield gauge(
        "lbd_server_weight",
        "Effective weight of the server.",
        labels,
        (([s.backend_name, s.name], s.weight) for s in servers),
    )


def _one_hot(
    servers: Sequence[ServerState], states: Sequence[str], current: Callable[[ServerState], str]
) -> Iterator[tuple[Sequence[str], float]]:
    """One series per state so dashboards can sum by state; 1 marks the current one."""
    for s in servers:
        now = current(s)
        for state in states:
            yield (s.backend_name, s.name, state), int(state == now)


def _access_logs(logs: Sequence[AccessLog]) -> Iterator[Metric]:
    """The access log's delivery counters (absent with `log.access: off`)."""
    if not logs:
        return
    yield counter(
        "lbd_access_log_lines_written_total",
        "Access-log lines written to the target.",
        [],
        [([], sum(a.written for a in logs))],
    )
    yield counter(
        "lbd_access_log_lines_dropped_total",
        "Access-log lines lost: queue full (the target is too slow) or the target failed.",
        ["reason"],
        [
            (["queue_full"], sum(a.queue_full for a in logs)),
            (["write_error"], sum(a.write_failed for a in logs)),
        ],
    )
    yield counter(
        "lbd_access_log_errors_total",
        "Failed attempts to open or write the access-log target.",
        [],
        [([], sum(a.errors for a in logs))],
    )
    yield gauge(
        "lbd_access_log_queued_lines",
        "Access-log lines waiting for the writer thread.",
        [],
        [([], sum(a.queued for a in logs))],
    )
