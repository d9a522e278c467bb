"""Plain-integer counters owned by frontends, backends, servers and modules.

Rules: the hot path only does `x += 1` on attributes of these objects: no locks, no dict lookups
by label, no prometheus-client objects. Exporters (prometheus.py, html.py, the admin socket)
read them at scrape time. Objects are kept across reloads by identity (see runtime.py), so a
counter never resets because the configuration changed.
"""

from __future__ import annotations

from typing import Final

# Response classes: index = status // 100 for 1xx..5xx, 0 for anything else ("other").
CLASS_LABELS = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

# Latency bucket upper bounds in seconds, suited to an EHR: 1 ms … 30 s.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (  # variable length: mypyc boxes a fixed one per use
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def status_class(status: int) -> int:
    c = status // 100
    return c if 1 <= c <= 5 else 0


class Histogram:
    """Fixed-bucket latency histogram; `counts[i]` is for values <= LATENCY_BUCKETS[i], the last
    slot for values above every bound (+Inf)."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bucket_of(seconds)] += 1
        self.sum += seconds
        self.count += 1

    def observe_at(self, bucket: int, seconds: float) -> None:
        """`observe` with the bucket already found (`bucket_of`), when one duration goes into
        several histograms (frontend, module, backend, server) on the hot path."""
        self.counts[bucket] += 1
        self.sum += seconds
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (what HAProxy-style pages show)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1]
        return LATENCY_BUCKETS[-1]


def bucket_of(seconds: float) -> int:
    """bisect_left(LATENCY_BUCKETS, seconds), written out: compiled, it compares C doubles
    where bisect would box a float per step (a fifth of the accounting cost of a request)."""
    lo = 0
    hi = len(LATENCY_BUCKETS)
    while lo < hi:
        mid = (lo + hi) >> 1
        if LATENCY_BUCKETS[mid] < seconds:
            lo = mid + 1
        else:
            hi = mid
    return lo


class TrafficCounters:
    """What frontends, backends, servers and modules all count."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_time",
        "cur_requests",
        "header_time",
        "max_requests",
        "queue_time",
        "requests",
        "response_time",
        "responses",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.responses = [0] * len(CLASS_LABELS)
        self.bytes_in = 0
        self.bytes_out = 0
        self.cur_requests = 0
        self.max_requests = 0
        self.response_time = Histogram()  # total: first request byte → last response byte
        self.header_time = Histogram()  # sent to a server → its response head (HAProxy's Tr)
        self.connect_time = Histogram()  # new server connections only (pooled ones cost 0)
        self.queue_time = Histogram()  # waiting for a server slot (maxconn), when it happened


class FrontendCounters(TrafficCounters):
    __slots__ = (
        "conn_cur",
        "conn_total",
        "denied",
        "denied_connections",
        "limited_connections",
        "limited_rate",
        "malformed",
        "maxconn_pauses",
        "maxconn_refused",
    )

    def __init__(self) -> None:
        super().__init__()
        self.conn_total = 0
        self.conn_cur = 0
        self.denied = 0
        self.malformed: dict[str, int] = {}  # reason → count; reasons are a fixed small set
        # Edge protection (lbd.limits): connections closed at accept by `allow`/`deny`;
        # 429s for a source over its request rate, or over its open connections; times
        # accepting paused at maxconn; connections accepted past maxconn and closed at once.
        self.denied_connections = 0
        self.limited_rate = 0
        self.limited_connections = 0
        self.maxconn_pauses = 0
        self.maxconn_refused = 0


class BackendCounters(TrafficCounters):
    __slots__ = (
        "conn_errors",
        "no_server",
        "persist_expired",
        "persist_invalid",
        "persist_new",
        "persist_redispatched",
        "persist_valid",
        "queue_cur",
        "queue_max",
        "queue_timeouts",
        "redispatches",
        "response_errors",
        "retries",
    )

    def __init__(self) -> None:
        super().__init__()
        self.queue_cur = 0  # requests waiting for a server slot (maxconn)
        self.queue_max = 0
        self.queue_timeouts = 0
        self.conn_errors = 0
        self.response_errors = 0
        self.retries = 0
        self.redispatches = 0
        self.no_server = 0
        # Persistence outcomes (cookie or stick table), one per request of a sticky backend:
        # HAProxy's cookie letters N (new), V (valid), D (server down: redispatched),
        # I (names no known server), E/O (cookie too old by maxidle/maxlife). An expired table
        # entry is a miss: new.
        self.persist_new = 0
        self.persist_valid = 0
        self.persist_redispatched = 0
        self.persist_invalid = 0
        self.persist_expired = 0


class ServerCounters(BackendCounters):
    __slots__ = ("connections",)

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0  # new TCP connections opened to this server
