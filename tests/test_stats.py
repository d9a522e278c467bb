"""The stats listener: /metrics, /stats.json, /stats.csv and /stats against a real socket.

Counters are set by hand on a runtime built from a real configuration, so every expected number
is written in the test. The last tests run a real Worker, a real mock backend and real requests
through lbd, and check that the numbers the proxy counts reach /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import errno
import hashlib
import io
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from lbd import __version__
from lbd.config.load import load_config_text
from lbd.config.schema import Address
from lbd.runtime import Runtime, RuntimeHolder, build_runtime
from lbd.stats import html as stats_html
from lbd.stats.counters import LATENCY_BUCKETS, TrafficCounters
from lbd.stats.server import StatsServer, apr1, load_htpasswd, verify_password
from lbd.stats.snapshot import RateTracker, snapshot

STARTED_AT = 1_700_000_000.0

CONFIG = """\
frontends:
  ehr:
    bind: ["127.0.0.1:18080"]
    modules:
      - {name: dmu, path_prefix: /dmu}
      - {name: rendez-vous, path_prefix: /rendez-vous}
    default_backend: app
backends:
  app:
    servers:
      - {name: app1, address: 127.0.0.1:19001, weight: 10}
      - {name: app2, address: 127.0.0.1:19002, weight: 5}
      - {name: app3, address: 127.0.0.1:19003}
      - {name: spare, address: 127.0.0.1:19004, backup: true}
  static:
    servers:
      - {name: static1, address: 127.0.0.1:19101}
"""

HOSTILE = '<script>alert("x")</script>&'


def fill(rt: Runtime) -> None:
    """Known numbers on every kind of object (response slots: 0 other, 1 1xx … 5 5xx)."""
    fe = rt.frontends["ehr"].counters
    fe.requests, fe.conn_total, fe.conn_cur, fe.denied = 7, 11, 2, 1
    fe.bytes_in, fe.bytes_out = 100, 2000
    fe.responses[2], fe.responses[4] = 6, 1
    fe.malformed.update({"missing-host": 3, "cl-and-te": 1})
    dmu = rt.frontends["ehr"].module_counters["dmu"]
    dmu.requests, dmu.responses[2], dmu.responses[5] = 4, 3, 1
    for seconds in (0.003, 0.003, 0.2, 7.0):
        dmu.response_time.observe(seconds)
    be = rt.backends["app"].counters
    be.requests, be.conn_errors, be.retries, be.redispatches, be.no_server = 6, 2, 2, 1, 1
    s1 = rt.servers[("app", "app1")]
    s1.counters.requests, s1.counters.responses[2], s1.counters.responses[0] = 5, 4, 1
    s1.counters.bytes_out, s1.counters.conn_errors, s1.counters.response_errors = 4096, 1, 3
    s1.counters.max_requests, s1.counters.cur_requests, s1.inflight = 9, 2, 2
    s1.counters.response_time.observe(0.04)
    s1.counters.connect_time.observe(0.002)
    rt.servers[("app", "app2")].admin = "drain"
    rt.servers[("app", "app3")].up = False
    rt.servers[("static", "static1")].admin = "maint"
    rt.servers[("app", "app2")].weight = 3
    fill_phases_and_health(rt)


def fill_phases_and_health(rt: Runtime) -> None:
    """Queue, phase histograms, module x server pairs and health-check counters."""
    be = rt.backends["app"].counters
    be.queue_cur, be.queue_max, be.queue_timeouts = 1, 4, 2
    be.queue_time.observe(0.3)
    be.queue_time.observe(0.5)
    be.header_time.observe(0.02)
    be.connect_time.observe(0.004)
    dmu = rt.frontends["ehr"].module_counters["dmu"]
    dmu.header_time.observe(0.02)
    dmu.connect_time.observe(0.004)
    dmu.queue_time.observe(0.3)
    rt.servers[("app", "app1")].counters.header_time.observe(0.03)
    pairs = rt.frontends["ehr"].module_servers
    for key, requests in [
        (("dmu", "app", "app1"), 3),
        (("dmu", "app", "app2"), 1),
        (("dmu", "app", "gone"), 9),  # a server removed by a reload: never shown
        (("other", "app", "app1"), 1),
        (("other", "static", "static1"), 3),
    ]:
        pairs[key] = TrafficCounters()
        pairs[key].requests = pairs[key].responses[2] = requests
    pairs[("dmu", "app", "app1")].responses[2] = 2
    pairs[("dmu", "app", "app1")].responses[5] = 1
    pairs[("dmu", "app", "app1")].response_time.observe(0.003)
    # app2 (draining): checked, one failure took it DOWN for 30 s, back UP, then one more
    # failure (UP 2/3, still up): chkfail 2, chkdown 1, downtime 30.
    now = [1000.0]
    health = rt.servers[("app", "app2")].health
    health.clock = lambda: now[0]
    health.start_checking("up")  # UP 1/3: the first failure takes it down
    health.failure("Layer4 connection problem")
    now[0] += 30.0
    health.success()
    health.success()
    health.failure("Layer4 timeout")


@pytest.fixture
async def runtime() -> Runtime:
    cfg = load_config_text(CONFIG, "stats.yaml")
    rt = build_runtime(cfg, None, asyncio.get_running_loop())
    fill(rt)
    return rt


@pytest.fixture
def holder(runtime: Runtime) -> RuntimeHolder:
    return RuntimeHolder(runtime)


@pytest.fixture
async def stats(holder: RuntimeHolder) -> AsyncIterator[tuple[StatsServer, str]]:
    server = StatsServer(started_at=STARTED_AT)
    await server.start(holder, Address("127.0.0.1", 0))
    assert server.address is not None
    host, port = server.address
    yield server, f"http://{host}:{port}"
    await server.stop()


async def fetch(url: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def metrics(base: str) -> dict[str, Any]:
    status, headers, text = await fetch(base + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    # Strict: the parser raises on any malformed line.
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family: Any, sample_name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    name = sample_name or family.name
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


# --- /metrics -------------------------------------------------------------------------------------

# Family (as the parser names it: counters lose `_total`) → label names of its samples.
REQUIRED = {
    "lbd_frontend_http_requests": {"frontend"},
    "lbd_backend_http_requests": {"backend"},
    "lbd_server_http_responses": {"backend", "server", "code"},
    "lbd_module_http_requests": {"frontend", "module"},
    "lbd_module_http_responses": {"frontend", "module", "code"},
    "lbd_module_response_time_seconds": {"frontend", "module"},
    "lbd_server_status": {"backend", "server", "state"},
    "lbd_frontend_malformed_requests": {"frontend", "reason"},
    "lbd_frontend_bytes_in": {"frontend"},
    "lbd_frontend_bytes_out": {"frontend"},
    "lbd_frontend_current_connections": {"frontend"},
    "lbd_backend_bytes_out": {"backend"},
    "lbd_backend_connection_errors": {"backend"},
    "lbd_backend_response_errors": {"backend"},
    "lbd_backend_retry_warnings": {"backend"},
    "lbd_backend_redispatch_warnings": {"backend"},
    "lbd_backend_active_servers": {"backend"},
    "lbd_server_bytes_in": {"backend", "server"},
    "lbd_server_current_requests": {"backend", "server"},
    "lbd_server_max_requests": {"backend", "server"},
    "lbd_server_weight": {"backend", "server"},
    "lbd_server_response_time_seconds": {"backend", "server"},
    "lbd_server_idle_connections": {"backend", "server"},
    "lbd_process_start_time_seconds": set(),
    "lbd_module_header_time_seconds": {"frontend", "module"},
    "lbd_module_connect_time_seconds": {"frontend", "module"},
    "lbd_module_queue_time_seconds": {"frontend", "module"},
    "lbd_backend_header_time_seconds": {"backend"},
    "lbd_backend_connect_time_seconds": {"backend"},
    "lbd_backend_queue_time_seconds": {"backend"},
    "lbd_server_header_time_seconds": {"backend", "server"},
    "lbd_server_connect_time_seconds": {"backend", "server"},
    "lbd_backend_current_queue": {"backend"},
    "lbd_backend_max_queue": {"backend"},
    "lbd_backend_queue_timeouts": {"backend"},
    "lbd_module_server_http_requests": {"frontend", "module", "backend", "server"},
    "lbd_module_server_http_responses": {"frontend", "module", "backend", "server", "code"},
    "lbd_server_check_failures": {"backend", "server"},
    "lbd_server_check_down_transitions": {"backend", "server"},
    "lbd_server_downtime_seconds": {"backend", "server"},
    "lbd_build_info": {"version"},
}


async def test_required_families_have_their_labels(stats: tuple[StatsServer, str]) -> None:
    families = await metrics(stats[1])
    for name, labels in REQUIRED.items():
        assert name in families, name
        for sample in families[name].samples:
            expected = labels | ({"le"} if sample.name.endswith("_bucket") else set())
            assert set(sample.labels) == expected, (name, sample)
    assert all(name.startswith("lbd_") for name in families)
    assert families["lbd_module_response_time_seconds"].type == "histogram"
    assert families["lbd_frontend_http_requests"].type == "counter"


async def test_values_follow_counters(stats: tuple[StatsServer, str]) -> None:
    m = await metrics(stats[1])
    fe = (("frontend", "ehr"),)
    assert values(m["lbd_frontend_http_requests"], "lbd_frontend_http_requests_total") == {fe: 7}
    assert values(m["lbd_frontend_bytes_out"], "lbd_frontend_bytes_out_total")[fe] == 2000
    assert values(m["lbd_frontend_current_connections"])[fe] == 2
    assert values(
        m["lbd_frontend_malformed_requests"], "lbd_frontend_malformed_requests_total"
    ) == {
        (("frontend", "ehr"), ("reason", "cl-and-te")): 1,
        (("frontend", "ehr"), ("reason", "missing-host")): 3,
    }
    app1 = (("backend", "app"), ("server", "app1"))
    codes = values(m["lbd_server_http_responses"], "lbd_server_http_responses_total")
    by_code = {dict(k)["code"]: v for k, v in codes.items() if dict(k)["server"] == "app1"}
    assert by_code == {
        "1xx": 0, "2xx": 4, "3xx": 0, "4xx": 0, "5xx": 0, "other": 1,
    }  # fmt: skip
    assert (
        values(m["lbd_server_connection_errors"], "lbd_server_connection_errors_total")[app1] == 1
    )
    assert values(m["lbd_server_response_errors"], "lbd_server_response_errors_total")[app1] == 3
    assert values(m["lbd_server_max_requests"])[app1] == 9
    assert values(m["lbd_server_current_requests"])[app1] == 2
    app = (("backend", "app"),)
    assert values(m["lbd_backend_http_requests"], "lbd_backend_http_requests_total")[app] == 6
    assert values(m["lbd_backend_retry_warnings"], "lbd_backend_retry_warnings_total")[app] == 2
    assert (
        values(m["lbd_backend_redispatch_warnings"], "lbd_backend_redispatch_warnings_total")[app]
        == 1
    )
    # app1 usable, app2 draining, app3 down; the backup is usable but not active.
    assert values(m["lbd_backend_active_servers"])[app] == 1
    assert values(m["lbd_backend_backup_servers"])[app] == 1
    assert values(m["lbd_backend_weight"])[app] == 10
    weights = values(m["lbd_server_weight"])
    assert weights[app1] == 10
    assert weights[(("backend", "app"), ("server", "app2"))] == 3
    assert values(m["lbd_build_info"]) == {(("version", __version__),): 1}
    assert values(m["lbd_process_start_time_seconds"]) == {(): STARTED_AT}


async def test_server_status_is_one_hot(stats: tuple[StatsServer, str]) -> None:
    m = await metrics(stats[1])
    current: dict[tuple[str, str], list[str]] = {}
    for labels, value in values(m["lbd_server_status"]).items():
        d = dict(labels)
        key = (d["backend"], d["server"])
        current.setdefault(key, [])
        if value == 1:
            current[key].append(d["state"])
        else:
            assert value == 0
    assert current == {
        ("app", "app1"): ["UP"],
        ("app", "app2"): ["DRAIN"],
        ("app", "app3"): ["DOWN"],
        ("app", "spare"): ["UP"],
        ("static", "static1"): ["MAINT"],
    }
    series_per_server = len(values(m["lbd_server_status"])) / len(current)
    assert series_per_server == 4


async def test_module_histogram(stats: tuple[StatsServer, str]) -> None:
    m = await metrics(stats[1])
    family = m["lbd_module_response_time_seconds"]
    dmu = [s for s in family.samples if s.labels.get("module") == "dmu"]
    buckets = {s.labels["le"]: s.value for s in dmu if s.name.endswith("_bucket")}
    assert list(buckets) == [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    # Observed 0.003, 0.003, 0.2, 7.0: cumulative counts per upper bound.
    assert buckets["0.0025"] == 0
    assert buckets["0.005"] == 2
    assert buckets["0.1"] == 2
    assert buckets["0.25"] == 3
    assert buckets["5.0"] == 3
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 4
    by_name = {s.name: s.value for s in dmu if not s.name.endswith("_bucket")}
    assert by_name["lbd_module_response_time_seconds_count"] == 4
    assert by_name["lbd_module_response_time_seconds_sum"] == pytest.approx(7.206)
    requests = values(m["lbd_module_http_requests"], "lbd_module_http_requests_total")
    assert requests == {
        (("frontend", "ehr"), ("module", "dmu")): 4,
        (("frontend", "ehr"), ("module", "rendez-vous")): 0,
        (("frontend", "ehr"), ("module", "other")): 0,
    }
    codes = values(m["lbd_module_http_responses"], "lbd_module_http_responses_total")
    assert codes[(("code", "5xx"), ("frontend", "ehr"), ("module", "dmu"))] == 1


async def test_phase_histograms_queue_and_health(stats: tuple[StatsServer, str]) -> None:
    m = await metrics(stats[1])
    app, dmu = (("backend", "app"),), (("frontend", "ehr"), ("module", "dmu"))
    app1 = (("backend", "app"), ("server", "app1"))
    app2 = (("backend", "app"), ("server", "app2"))
    for family, key, count, total in [
        ("lbd_backend_queue_time_seconds", app, 2, 0.8),
        ("lbd_backend_header_time_seconds", app, 1, 0.02),
        ("lbd_backend_connect_time_seconds", app, 1, 0.004),
        ("lbd_module_queue_time_seconds", dmu, 1, 0.3),
        ("lbd_module_header_time_seconds", dmu, 1, 0.02),
        ("lbd_module_connect_time_seconds", dmu, 1, 0.004),
        ("lbd_server_header_time_seconds", app1, 1, 0.03),
        ("lbd_server_connect_time_seconds", app1, 1, 0.002),
    ]:
        assert m[family].type == "histogram", family
        assert values(m[family], family + "_count")[key] == count, family
        assert values(m[family], family + "_sum")[key] == pytest.approx(total), family
    buckets = values(m["lbd_backend_queue_time_seconds"], "lbd_backend_queue_time_seconds_bucket")
    assert buckets[(*app, ("le", "0.25"))] == 0
    assert buckets[(*app, ("le", "0.5"))] == 2
    assert "lbd_server_queue_time_seconds" not in m  # lbd queues per backend
    assert values(m["lbd_backend_current_queue"]) == {app: 1, (("backend", "static"),): 0}
    assert values(m["lbd_backend_max_queue"])[app] == 4
    assert m["lbd_backend_queue_timeouts"].type == "counter"
    timeouts = values(m["lbd_backend_queue_timeouts"], "lbd_backend_queue_timeouts_total")
    assert timeouts == {app: 2, (("backend", "static"),): 0}
    failures = values(m["lbd_server_check_failures"], "lbd_server_check_failures_total")
    assert (failures[app2], failures[app1]) == (2, 0)
    downs = values(
        m["lbd_server_check_down_transitions"], "lbd_server_check_down_transitions_total"
    )
    assert (downs[app2], downs[app1]) == (1, 0)
    downtime = values(m["lbd_server_downtime_seconds"], "lbd_server_downtime_seconds_total")
    assert (downtime[app2], downtime[app1]) == (30.0, 0.0)


async def test_module_server_series(stats: tuple[StatsServer, str]) -> None:
    m = await metrics(stats[1])
    requests = values(m["lbd_module_server_http_requests"], "lbd_module_server_http_requests_total")
    assert {tuple(v for _, v in sorted(dict(k).items())): n for k, n in requests.items()} == {
        # (backend, frontend, module, server) in label-name order
        ("app", "ehr", "dmu", "app1"): 3,
        ("app", "ehr", "dmu", "app2"): 1,
        ("app", "ehr", "other", "app1"): 1,
        ("static", "ehr", "other", "static1"): 3,
    }  # the pair of a server no longer configured ("gone") is not exported
    codes = values(m["lbd_module_server_http_responses"], "lbd_module_server_http_responses_total")
    pair = {"backend": "app", "frontend": "ehr", "module": "dmu", "server": "app1"}
    by_code: dict[str, float] = {}
    for k, v in codes.items():
        labels = dict(k)
        code = labels.pop("code")
        if labels == pair:
            by_code[code] = v
    assert by_code == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1, "other": 0}
    assert len(codes) == 4 * 6


async def test_scrape_follows_reload(
    runtime: Runtime, holder: RuntimeHolder, stats: tuple[StatsServer, str]
) -> None:
    extra = "      - {name: app4, address: 127.0.0.1:19005}\n"
    text = CONFIG.replace("  static:\n", extra + "  static:\n")
    new = build_runtime(load_config_text(text, "stats.yaml"), runtime, asyncio.get_running_loop())
    holder.runtime = new  # what a reload does
    m = await metrics(stats[1])
    requests = values(m["lbd_server_http_requests"], "lbd_server_http_requests_total")
    assert requests[(("backend", "app"), ("server", "app4"))] == 0
    assert requests[(("backend", "app"), ("server", "app1"))] == 5  # kept across the reload
    assert values(m["lbd_config_generation"]) == {(): 2}


async def test_promtool_accepts_metrics(stats: tuple[StatsServer, str], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    _, _, text = await fetch(stats[1] + "/metrics")
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no lint warning either


# --- /stats.json --------------------------------------------------------------------------------


async def test_stats_json(stats: tuple[StatsServer, str]) -> None:
    async with aiohttp.ClientSession() as session, session.get(stats[1] + "/stats.json") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        data = await r.json()
    assert set(data) == {"info", "frontends", "backends"}
    info = data["info"]
    assert set(info) == {"version", "pid", "started_at", "uptime_seconds", "generation"}
    assert info["started_at"] == STARTED_AT
    assert info["generation"] == 1
    [fe] = data["frontends"]
    assert fe["name"] == "ehr"
    assert (fe["requests"], fe["conn_cur"], fe["conn_total"], fe["denied"]) == (7, 2, 11, 1)
    assert fe["malformed"] == {"cl-and-te": 1, "missing-host": 3}
    assert fe["malformed_total"] == 4
    assert fe["responses"] == {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 1, "5xx": 0, "other": 0}
    modules = {m["name"]: m for m in fe["modules"]}
    assert list(modules) == ["dmu", "rendez-vous", "other"]
    dmu = modules["dmu"]
    assert dmu["requests"] == 4
    assert dmu["error_rate"] == 0.25
    assert dmu["latency"] == {
        "count": 4, "mean": pytest.approx(1.8015), "p50": 0.005, "p95": 10.0, "p99": 10.0,
    }  # fmt: skip
    assert {"req_rate", "bytes_in", "bytes_out"} <= set(dmu)
    assert (dmu["queue_time"]["count"], dmu["queue_time"]["p50"]) == (1, 0.5)
    assert (dmu["header_time"]["count"], dmu["connect_time"]["count"]) == (1, 1)
    assert dmu["servers"] == [
        {
            "backend": "app", "server": "app1", "requests": 3, "share": 0.75,
            "responses": {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1, "other": 0},
            "latency": {"count": 1, "mean": 0.003, "p50": 0.005, "p95": 0.005, "p99": 0.005},
        },
        {
            "backend": "app", "server": "app2", "requests": 1, "share": 0.25,
            "responses": {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0},
            "latency": {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0},
        },
    ]  # fmt: skip
    assert [(x["backend"], x["server"]) for x in modules["other"]["servers"]] == [
        ("app", "app1"), ("static", "static1"),
    ]  # fmt: skip
    assert modules["rendez-vous"]["servers"] == []
    backends = {b["name"]: b for b in data["backends"]}
    app = backends["app"]
    assert (app["queue_cur"], app["queue_max"], app["queue_timeouts"]) == (1, 4, 2)
    assert app["queue_time"]["mean"] == pytest.approx(0.4)
    assert (app["header_time"]["count"], app["connect_time"]["count"]) == (1, 1)
    assert (app["status"], app["active_servers"], app["backup_servers"], app["weight"]) == (
        "UP", 1, 1, 10,
    )  # fmt: skip
    assert (app["conn_errors"], app["retries"], app["redispatches"], app["no_server"]) == (
        2, 2, 1, 1,
    )  # fmt: skip
    servers = {s["name"]: s for s in app["servers"]}
    assert [s["status"] for s in servers.values()] == ["UP", "DRAIN", "DOWN", "UP"]
    app1 = servers["app1"]
    assert app1["admin"] == "ready" and app1["up"] is True and app1["backup"] is False
    assert (app1["inflight"], app1["max_requests"], app1["requests"]) == (2, 9, 5)
    assert (app1["conn_errors"], app1["response_errors"], app1["idle_connections"]) == (1, 3, 0)
    assert app1["latency"]["p50"] == 0.05
    assert app1["connect_time"]["count"] == 1
    assert app1["header_time"]["mean"] == 0.03
    assert (app1["checked"], app1["check_failures"], app1["check_downs"]) == (False, 0, 0)
    app2 = servers["app2"]
    assert (app2["checked"], app2["check_failures"], app2["check_downs"]) == (True, 2, 1)
    assert (app2["downtime"], app2["status"]) == (30.0, "DRAIN")
    assert servers["app2"]["admin"] == "drain" and servers["app2"]["weight"] == 3
    assert servers["spare"]["backup"] is True
    assert backends["static"]["status"] == "DOWN"  # its only server is in maintenance
    assert backends["static"]["servers"][0]["status"] == "MAINT"


# --- rates ---------------------------------------------------------------------------------------


def test_rate_tracker() -> None:
    t = RateTracker(min_interval=1.0)
    key = ("server", "app", "app1")
    assert t.update({key: 100}, now=10.0) == {key: 0.0}  # first reading: no rate yet
    assert t.update({key: 120}, now=12.0) == {key: 10.0}
    assert t.update({key: 500}, now=12.5) == {key: 10.0}  # too close: last rate, same baseline
    assert t.update({key: 520}, now=14.0) == {key: 200.0}  # (520 - 120) / 2 s
    assert t.update({key: 3}, now=15.0) == {key: 0.0}  # counters were cleared: new baseline
    assert t.update({key: 9}, now=17.0) == {key: 3.0}
    other = ("backend", "app")
    assert t.update({other: 5}, now=18.0) == {other: 0.0}
    assert t.update({key: 9}, now=20.0) == {key: 0.0}  # `key` was forgotten when absent


async def test_snapshot_rates(runtime: Runtime) -> None:
    tracker = RateTracker()
    snapshot(runtime, STARTED_AT, tracker, now=100.0)
    runtime.servers[("app", "app1")].counters.requests += 30
    runtime.frontends["ehr"].module_counters["dmu"].requests += 8
    snap = snapshot(runtime, STARTED_AT, tracker, now=104.0)
    app1 = snap["backends"][0]["servers"][0]
    assert app1["req_rate"] == 7.5
    assert snap["frontends"][0]["modules"][0]["req_rate"] == 2.0
    assert snap["backends"][0]["req_rate"] == 0.0
    assert snapshot(runtime, STARTED_AT)["backends"][0]["servers"][0]["req_rate"] == 0.0


# --- /stats.csv ---------------------------------------------------------------------------------

CSV_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,stot,bin,bout,ereq,econ,eresp,wretr,wredis,status,"
    "weight,chkfail,chkdown,downtime,rate,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
    "hrsp_other,qtime,ctime,rtime,ttime"
)


async def test_stats_csv(stats: tuple[StatsServer, str]) -> None:
    status, headers, text = await fetch(stats[1] + "/stats.csv")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    lines = text.splitlines()
    assert lines[0] == CSV_HEADER
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("# "))))
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("ehr", "FRONTEND"),
        ("app", "app1"), ("app", "app2"), ("app", "app3"), ("app", "spare"), ("app", "BACKEND"),
        ("static", "static1"), ("static", "BACKEND"),
    ]  # fmt: skip
    fe, app1, app2, app3 = rows[0], rows[1], rows[2], rows[3]
    assert (fe["scur"], fe["stot"], fe["bin"], fe["bout"], fe["ereq"]) == (
        "2",
        "11",
        "100",
        "2000",
        "4",
    )
    assert (fe["status"], fe["hrsp_2xx"], fe["hrsp_4xx"], fe["qcur"]) == ("OPEN", "6", "1", "")
    assert (app1["scur"], app1["smax"], app1["stot"], app1["econ"], app1["eresp"]) == (
        "2", "9", "5", "1", "3",
    )  # fmt: skip
    assert (app1["status"], app1["weight"], app1["hrsp_other"], app1["bout"]) == (
        "UP", "10", "1", "4096",
    )  # fmt: skip
    assert (app1["ctime"], app1["ttime"], app1["chkfail"]) == ("2", "40", "")
    assert (app1["qcur"], app1["qmax"], app1["qtime"], app1["rtime"]) == ("0", "0", "", "30")
    assert (app1["chkdown"], app1["downtime"]) == ("", "")  # no health check: empty, as HAProxy
    assert (app2["chkfail"], app2["chkdown"], app2["downtime"]) == ("2", "1", "30")
    assert (app2["status"], app2["weight"], app3["status"]) == ("DRAIN", "3", "DOWN")
    backend = rows[5]
    assert (backend["stot"], backend["econ"], backend["wretr"], backend["wredis"]) == (
        "6", "2", "2", "1",
    )  # fmt: skip
    assert (backend["status"], backend["weight"]) == ("UP", "10")
    assert (backend["qcur"], backend["qmax"], backend["qtime"]) == ("1", "4", "400")
    assert (backend["ctime"], backend["rtime"], backend["chkfail"]) == ("4", "20", "")
    assert (fe["qmax"], fe["chkfail"], fe["qtime"], fe["rtime"]) == ("", "", "", "")
    assert (rows[7]["qcur"], rows[7]["qmax"], rows[7]["qtime"]) == ("0", "0", "")
    assert (rows[6]["status"], rows[7]["status"]) == ("MAINT", "DOWN")


# --- /stats (HTML) ------------------------------------------------------------------------------


async def test_stats_html(runtime: Runtime, stats: tuple[StatsServer, str]) -> None:
    runtime.frontends["ehr"].counters.malformed[HOSTILE] = 1
    status, headers, page = await fetch(stats[1] + "/stats")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert '<meta http-equiv="refresh" content="5">' in page
    for name in ("app1", "app2", "app3", "spare", "static1", "dmu", "rendez-vous", "other"):
        assert f">{name}<" in page, name
    assert '<tr class="st-up"><td>app1</td>' in page
    assert '<tr class="st-drain"><td>app2</td>' in page
    assert '<tr class="st-down"><td>app3</td>' in page
    assert '<tr class="st-maint"><td>static1</td>' in page
    assert "<td>missing-host</td><td>3</td>" in page
    assert "<th>Served by</th>" in page
    assert '<td class="txt">app1 75% · app2 25%</td></tr>' in page  # dmu
    assert '<td class="txt">static/static1 75% · app/app1 25%</td></tr>' in page  # two backends
    assert '<td class="txt">–</td></tr>' in page  # rendez-vous: no server answered yet
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    # Self-contained and silent about the version.
    assert "<link" not in page and "src=" not in page and "url(" not in page
    assert __version__ not in page and "version" not in page.lower()


async def test_html_escapes_every_snapshot_string(runtime: Runtime) -> None:
    snap = snapshot(runtime, STARTED_AT)
    server = snap["backends"][0]["servers"][0]
    server["name"], server["admin"], server["status"] = HOSTILE, HOSTILE, HOSTILE
    snap["frontends"][0]["modules"][0]["name"] = HOSTILE
    snap["frontends"][0]["modules"][0]["servers"][0]["server"] = HOSTILE
    snap["backends"][0]["name"] = HOSTILE
    page = stats_html.render(snap)
    assert "<script" not in page
    assert '"x"' not in page
    assert '<tr class="st-unknown">' in page  # an unknown status never reaches class=
    assert '<td class="txt">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp; 75% · ' in page


async def test_served_by_rounds_small_shares(runtime: Runtime) -> None:
    pairs = runtime.frontends["ehr"].module_servers
    pairs[("dmu", "app", "app3")] = TrafficCounters()  # created, no answer yet: not listed
    pairs[("dmu", "app", "app1")].requests = 500
    pairs[("dmu", "app", "app2")].requests = 1
    [dmu, *_] = snapshot(runtime, STARTED_AT)["frontends"][0]["modules"]
    assert [x["server"] for x in dmu["servers"]] == ["app1", "app2", "app3"]
    assert stats_html.served_by(dmu["servers"]) == "app1 100% · app2 <1%"


async def test_root_redirects_to_stats(stats: tuple[StatsServer, str]) -> None:
    status, headers, _ = await fetch(stats[1] + "/", allow_redirects=False)
    assert status == 302
    assert headers["Location"] == "/stats"
    assert headers["Cache-Control"] == "no-store"


# --- listener lifecycle ---------------------------------------------------------------------------


async def test_bind_conflict_raises_oserror(runtime: Runtime) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatsServer()
        with pytest.raises(OSError) as info:
            await server.start(RuntimeHolder(runtime), Address("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.strerror is not None  # what the worker prints before exiting 3
        await server.stop()  # harmless after a failed start


async def test_stop_closes_the_listener(runtime: Runtime) -> None:
    server = StatsServer()
    await server.start(RuntimeHolder(runtime), Address("127.0.0.1", 0))
    assert server.address is not None
    host, port = server.address
    await server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)


# --- basic authentication -------------------------------------------------------------------------


def test_apr1_matches_htpasswd() -> None:
    # Reference from `openssl passwd -apr1 -salt abcdefgh secret` (same as `htpasswd -m`).
    assert apr1(b"secret", b"abcdefgh") == "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"
    assert verify_password("secret", "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/")
    assert not verify_password("Secret", "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/")
    openssl = shutil.which("openssl")
    if openssl is None:
        return
    for password, salt in [("", "Xy"), ("x" * 17, "12345678"), ("pâss wörd", "s4lt")]:
        ref = subprocess.run(
            [openssl, "passwd", "-apr1", "-salt", salt, password],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert verify_password(password, ref), (password, ref)


def test_htpasswd_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("# comment\n\nops:$2y$05$abcdefghijklmnopqrstuuv\n")
    with pytest.raises(OSError, match=r"htpasswd:3: expected USER"):
        load_htpasswd(str(path))
    path.write_text("# only a comment\n")
    with pytest.raises(OSError, match="no users"):
        load_htpasswd(str(path))
    with pytest.raises(OSError, match="cannot read auth_file"):
        load_htpasswd(str(tmp_path / "missing"))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_auth_file_protects_every_path(runtime: Runtime, tmp_path: Path) -> None:
    sha = base64.b64encode(hashlib.sha1(b"scrape").digest()).decode()
    path = tmp_path / "stats.htpasswd"
    path.write_text(
        textwrap.dedent(f"""\
        ops:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/
        prometheus:{{SHA}}{sha}
        """)
    )
    server = StatsServer(auth_file=str(path))
    await server.start(RuntimeHolder(runtime), Address("127.0.0.1", 0))
    assert server.address is not None
    base = "http://{}:{}".format(*server.address)
    try:
        for target in ("/", "/metrics", "/stats", "/stats.json", "/stats.csv"):
            status, headers, body = await fetch(base + target, allow_redirects=False)
            assert status == 401, target
            assert headers["WWW-Authenticate"].startswith('Basic realm="lbd stats"')
            assert "app1" not in body
        wrong = basic("ops", "guess")
        assert (await fetch(base + "/stats", headers=wrong))[0] == 401
        for user, password in [("ops", "secret"), ("prometheus", "scrape")]:
            auth = basic(user, password)
            for _ in range(2):  # the second time comes from the cache of valid headers
                status, _, body = await fetch(base + "/stats.csv", headers=auth)
                assert status == 200 and "app1" in body
    finally:
        await server.stop()


# --- end to end: a real Worker, a real backend, real requests ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_worker_counts_reach_metrics(tmp_path: Path) -> None:
    from lbd.mock.app import start_mock
    from lbd.process.worker import Worker

    mock = await start_mock("m1", "127.0.0.1", 0)
    fe_port, stats_port = free_port(), free_port()
    text = f"""\
global:
  stats: {{bind: "127.0.0.1:{stats_port}"}}
  log: {{access: "off"}}
frontends:
  ehr:
    bind: ["127.0.0.1:{fe_port}"]
    modules:
      - {{name: dmu, path_prefix: /dmu}}
    default_backend: app
backends:
  app:
    servers:
      - {{name: m1, address: "127.0.0.1:{mock.port}"}}
"""
    worker = Worker(load_config_text(text, str(tmp_path / "lbd.yaml")))
    await worker.start()
    try:
        async with aiohttp.ClientSession() as session:
            for target in ("/dmu/a", "/dmu/b", "/accueil/"):
                async with session.get(f"http://127.0.0.1:{fe_port}{target}") as resp:
                    assert resp.status == 200
                    await resp.read()
        m = await metrics(f"http://127.0.0.1:{stats_port}")
    finally:
        await worker.graceful_stop()
        await mock.close()
    modules = values(m["lbd_module_http_requests"], "lbd_module_http_requests_total")
    assert modules[(("frontend", "ehr"), ("module", "dmu"))] == 2
    assert modules[(("frontend", "ehr"), ("module", "other"))] == 1
    server = (("backend", "app"), ("server", "m1"))
    assert values(m["lbd_server_http_requests"], "lbd_server_http_requests_total")[server] == 3
    codes = values(m["lbd_server_http_responses"], "lbd_server_http_responses_total")
    assert codes[(("backend", "app"), ("code", "2xx"), ("server", "m1"))] == 3
    hist = values(m["lbd_module_response_time_seconds"], "lbd_module_response_time_seconds_count")
    assert hist[(("frontend", "ehr"), ("module", "dmu"))] == 2
    assert values(m["lbd_server_status"])[(*server, ("state", "UP"))] == 1


async def test_stats_port_in_use_exits_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stats_port = taken.getsockname()[1]
        config = tmp_path / "lbd.yaml"
        config.write_text(
            f"global: {{stats: {{bind: '127.0.0.1:{stats_port}'}}, log: {{access: 'off'}}}}\n"
            + CONFIG.replace("18080", str(free_port()))
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "lbd", "run", "-c", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert f"127.0.0.1:{stats_port}" in result.stderr
