"""lbd/stats/aggregate.py: worker dumps merged into totals, generically over the counter classes.

Pure data tests: counters filled by hand, dumped through JSON as on the control channel.
"""

from __future__ import annotations

import asyncio
import json

from lbd.config.load import load_config_text
from lbd.inspect.store import REJECTED, CaptureStore, Sample
from lbd.runtime import Runtime, build_runtime
from lbd.stats.aggregate import (
    add_counters,
    dump_counters,
    dump_runtime,
    merge_into,
    retire,
    zero_counters,
)
from lbd.stats.counters import LATENCY_BUCKETS, FrontendCounters, ServerCounters

CONFIG = """
frontends:
  fe: {bind: ["127.0.0.1:1"], default_backend: app, modules: [{name: dmu, path_prefix: /dmu}]}
backends:
  app:
    servers:
      - {name: s1, address: "127.0.0.1:2"}
      - {name: s2, address: "127.0.0.1:3"}
"""


def _runtime() -> Runtime:
    loop = asyncio.new_event_loop()
    try:
        return build_runtime(load_config_text(CONFIG, "lbd.yaml"), None, loop)
    finally:
        loop.close()


def _through_json(dump: object) -> dict[str, object]:
    return json.loads(json.dumps(dump))  # type: ignore[no-any-return]


def _worker(requests: int, max_requests: int, latency: float, when: float) -> Runtime:
    rt = _runtime()
    fe = rt.frontends["fe"]
    fe.counters.requests = requests
    fe.counters.conn_cur = 1
    fe.counters.responses[2] = requests
    fe.counters.malformed["bad_uri"] = 1
    fe.module_counters["dmu"].requests = requests
    fe.module_counters["dmu"].response_time.observe(latency)
    fe.module_servers[("dmu", "app", "s1")] = type(fe.module_counters["dmu"])()
    fe.module_servers[("dmu", "app", "s1")].requests = requests
    fe.captures.record(
        "bad_uri", "-", Sample(when, "127.0.0.1:9", "GET", REJECTED, 400, ("bad_uri",))
    )
    s1 = rt.servers[("app", "s1")]
    s1.counters.requests = requests
    s1.counters.max_requests = max_requests
    s1.counters.queue_max = max_requests
    s1.inflight = 1
    rt.backends["app"].counters.requests = requests
    return rt


def test_totals_are_sums_and_high_water_marks_are_maxima() -> None:
    workers = [_worker(3, 2, 0.002, 100.0), _worker(4, 5, 0.2, 200.0)]
    master = _runtime()
    merge_into(master, [_through_json(dump_runtime(w)) for w in workers])
    fe = master.frontends["fe"]
    assert fe.counters.requests == 7 and fe.counters.responses[2] == 7
    assert fe.counters.conn_cur == 2  # a gauge: the sum is what runs right now
    assert fe.counters.malformed == {"bad_uri": 2}
    dmu = fe.module_counters["dmu"].response_time
    assert dmu.count == 2 and sum(dmu.counts) == 2
    assert dmu.counts[LATENCY_BUCKETS.index(0.0025)] == 1
    assert dmu.counts[LATENCY_BUCKETS.index(0.25)] == 1
    assert fe.module_servers[("dmu", "app", "s1")].requests == 7
    s1 = master.servers[("app", "s1")]
    assert s1.counters.requests == 7 and s1.inflight == 2
    assert s1.counters.max_requests == 5 and s1.counters.queue_max == 5
    assert master.backends["app"].counters.requests == 7
    entry = fe.captures.get("bad_uri")
    assert entry is not None and entry.count == 2
    assert (entry.first_seen, entry.last_seen) == (100.0, 200.0)
    assert [s.time for s in reversed(entry.samples)] == [200.0, 100.0]  # newest first

    # A second reading replaces the totals (never adds to the previous ones).
    merge_into(master, [_through_json(dump_runtime(workers[0]))])
    assert fe.counters.requests == 3 and s1.counters.max_requests == 2
    assert fe.captures.get("bad_uri") is not None
    merge_into(master, [])
    assert fe.counters.requests == 0 and fe.captures.get("bad_uri") is None


def test_a_counter_added_to_a_class_aggregates_without_change() -> None:
    # A plain slots class stands in for counters.py's classes grown by two fields (those may be
    # compiled by mypyc, which admits no Python subclass); the compiled ones are read the same
    # way, through their attribute descriptors (next test).
    class Extended:
        __slots__ = ("persist_hits", "reasons", "requests")

        def __init__(self) -> None:
            self.requests = 0
            self.persist_hits = 0
            self.reasons: dict[str, int] = {}

    a, b, total = Extended(), Extended(), Extended()
    a.persist_hits, b.persist_hits = 2, 5
    a.requests, b.requests = 1, 1
    a.reasons["x"], b.reasons["x"], b.reasons["y"] = 1, 1, 4
    for one in (a, b):
        add_counters(total, _through_json(dump_counters(one)))
    assert total.persist_hits == 7 and total.requests == 2
    assert total.reasons == {"x": 2, "y": 4}


def test_every_server_counter_is_dumped() -> None:
    c = ServerCounters()
    c.connections, c.retries, c.requests = 3, 2, 1
    dump = dump_counters(c)
    # One field from each class of the hierarchy, and the histograms.
    assert dump["connections"] == 3 and dump["retries"] == 2 and dump["requests"] == 1
    assert dump["response_time"] == {"counts": [0] * 15, "sum": 0.0, "count": 0}
    assert set(dump) >= {"persist_expired", "queue_max", "bytes_out", "responses"}


def test_empty_store_merges_to_empty() -> None:
    master = _runtime()
    merge_into(master, [_through_json(dump_runtime(_runtime()))])
    assert master.frontends["fe"].captures.total == 0
    assert isinstance(master.frontends["fe"].captures, CaptureStore)


def test_retired_workers_keep_their_counters_but_not_their_gauges() -> None:
    """Totals over a live worker plus two that exited: counters summed, high-water marks kept,
    gauges and in-flight requests of the dead ones left out, the dumps themselves unchanged."""
    first = _through_json(dump_runtime(_worker(3, 2, 0.002, 100.0)))
    second = _through_json(dump_runtime(_worker(4, 5, 0.2, 200.0)))
    kept = json.dumps(first)
    retired = retire(None, first)
    retired = retire(retired, second)
    assert json.dumps(first) == kept
    live = _worker(10, 1, 0.002, 300.0)
    master = _runtime()
    merge_into(master, [_through_json(dump_runtime(live)), retired])
    fe = master.frontends["fe"]
    assert fe.counters.requests == 17 and fe.counters.responses[2] == 17
    assert fe.counters.conn_cur == 1  # only the live worker's open connection
    assert fe.counters.malformed == {"bad_uri": 3}
    assert fe.module_counters["dmu"].requests == 17
    assert fe.module_counters["dmu"].response_time.count == 3
    assert fe.module_servers[("dmu", "app", "s1")].requests == 17
    s1 = master.servers[("app", "s1")]
    assert s1.counters.requests == 17 and s1.inflight == 1
    assert s1.counters.max_requests == 5 and s1.counters.queue_max == 5
    assert master.backends["app"].counters.requests == 17
    entry = fe.captures.get("bad_uri")
    assert entry is not None and entry.count == 1  # samples of dead workers are not kept


def test_clearing_counters_in_a_running_process_keeps_what_runs_now() -> None:
    # `clear counters` with requests in flight: their end decrements the gauges, which would
    # go below zero had they been zeroed too.
    c = FrontendCounters()
    c.conn_cur, c.cur_requests, c.conn_total = 3, 2, 40
    zero_counters(c, keep_gauges=True)
    assert (c.conn_cur, c.cur_requests, c.conn_total) == (3, 2, 0)
    zero_counters(c)  # the master's totals, rebuilt from the workers' dumps
    assert (c.conn_cur, c.cur_requests) == (0, 0)
