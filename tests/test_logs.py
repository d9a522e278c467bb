"""Access log, end to end: every field parsed back from real traffic, every target, every failure.

A real lbd (`python -m lbd run -c FILE`) proxies to a real mock EHR backend; each test request
goes on its own connection, so the client port the test saw identifies its log line. Targets:
a file (and its logrotate-style reopen on SIGUSR1), stdout, syslog over UDP and over a unix
datagram socket (RFC 5424 header parsed back). Failures: a target that stalls (a FIFO nobody
reads) must not stall requests, only drop lines, counted in /metrics; a target that fails (a
closed stdout pipe, a path that cannot be opened, a syslog port nobody listens on) is counted
and reported on stderr, never a crash. The first tests are pure unit tests of the formatting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import (
    HOST,
    IO_TIMEOUT,
    REPO,
    TEST_TIMEOUTS,
    Harness,
    LbdProcess,
    Wire,
    fixed,
    free_port,
    request,
    response,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from lbd.logs.access import BATCH_LINES, QUEUE_LINES, AccessLog
from lbd.logs.formats import MAX_PARAMS, DateCache, escape, mask_query
from lbd.logs.targets import SyslogTarget

pytestmark = pytest.mark.timeout(60)

# uvloop's loop.time() ticks in whole milliseconds and is read once per loop iteration: stamps
# taken from it (and the accept date derived from them) are good to a few milliseconds.
CLOCK_SLACK = 0.005
SECRET = "SECRET-7f3a"  # sent in places that must never reach a log line

# HAProxy's httplog, as lbd writes it (see lbd/logs/formats.py).
HTTPLOG = re.compile(
    r"(?P<client_ip>[0-9a-f.:]+):(?P<client_port>\d+) "
    r"\[(?P<accept_date>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] "
    r"(?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<tr>-?\d+)/(?P<tw>-?\d+)/(?P<tc>-?\d+)/(?P<tr_server>-?\d+)/(?P<ta>\d+) "
    r"(?P<status>-?\d+) (?P<bytes_read>\d+) (?P<req_cookie>\S+) (?P<resp_cookie>\S+) "
    r"(?P<termination_state>\S{4}) "
    r"(?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srv_conn>\d+)/(?P<retries>\d+) "
    r"(?P<srv_queue>\d+)/(?P<backend_queue>\d+) \{(?P<module>[^}]*)\} "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/(?P<http_version>\d\.\d)"'
)
INT_FIELDS = (
    "client_port", "tr", "tw", "tc", "tr_server", "ta", "status", "bytes_read",
    "actconn", "feconn", "beconn", "srv_conn", "retries", "srv_queue", "backend_queue",
)  # fmt: skip
JSON_KEYS = {
    "client_ip", "client_port", "accept_date", "frontend", "backend", "server", "module", "tr",
    "tw", "tc", "tr_server", "ta", "status", "bytes_read", "bytes_uploaded", "termination_state",
    "actconn", "feconn", "beconn", "srv_conn", "retries", "srv_queue", "backend_queue", "method",
    "path", "http_version",
}  # fmt: skip
# RFC 5424 §6: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-) (?P<msg>.*)",
    re.DOTALL,
)


# --- formatting, unit -------------------------------------------------------------------------


LONG_QUERY_NAMES = [f"p{i}=***" for i in range(32)]  # MAX_PARAMS spelled out, then one ***


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        (b"ipp=123456", "ipp=***"),
        (b"ipp=123456&tab=bio", "ipp=***&tab=***"),
        (b"123456", "***"),  # a bare value
        (b"123456=1", "***"),  # an identifier used as a name
        (b"a=&b=2", "a=&b=***"),  # an empty value tells nothing
        (b"q=%C3%A9l%C3%A8ve&", "q=***&"),
        (b"filter[nir]=1850&x", "filter[nir]=***&***"),
        (b"na me=1", "***"),
        (b"&".join(b"p%d=v" % i for i in range(40)), "&".join([*LONG_QUERY_NAMES, "***"])),
    ],
)  # fmt: skip
def test_query_values_are_masked(query: bytes, logged: str) -> None:
    assert mask_query(query) == logged


@pytest.mark.parametrize(
    "query",
    [
        b"&".join([b"a" * 40 + b"=1"] * 31) + b"&x y=1",  # 31 good names, then a bad one
        b"&".join([b"a" * 60] * 31) + b"=",
        b"a" * 8000,
        b"&".join([b"a" * 127 + b"=1"] * 60),
    ],
)
def test_hostile_queries_are_masked_in_linear_time(query: bytes) -> None:
    """The client chooses the query: no pattern may backtrack across parameters (this took
    minutes with an ambiguous name pattern; it must take well under a millisecond)."""
    t0 = time.perf_counter()
    masked = mask_query(query)
    assert time.perf_counter() - t0 < 0.05  # generous: a blow-up is minutes
    assert "=1" not in masked
    assert masked.count("&") == min(query.count(b"&"), MAX_PARAMS)


# The regular-expression definitions mask_query and escape had before they became byte loops:
# the specification the loops are held to on random input.
_NAME = rb"(?=[^=&]*[A-Za-z])[\w.\-\[\]%]{1,64}+"
_PARAM_NAME = re.compile(_NAME)
_UNSAFE = re.compile(rb'[\x00-\x20"#\x7f-\xff]')


def _mask_by_definition(query: bytes) -> str:
    out: list[str] = []
    for i, part in enumerate(query.split(b"&", MAX_PARAMS)):
        if i == MAX_PARAMS:
            out.append("***")
            break
        name, eq, value = part.partition(b"=")
        if not part:
            out.append("")
        elif eq and _PARAM_NAME.fullmatch(name) is not None:
            out.append(name.decode("ascii") + ("=***" if value else "="))
        else:
            out.append("***")
    return "&".join(out)


def test_mask_query_and_escape_match_their_definitions_on_random_input() -> None:
    rng = random.Random(5)
    alphabet = b'aZ9_.-[]%=&&== x\xc3#"\x01'
    for _ in range(20_000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 20)))
        assert mask_query(raw) == _mask_by_definition(raw), raw
        expected = _UNSAFE.sub(lambda m: b"#%02X" % m[0][0], raw).decode("ascii")
        assert escape(raw) == expected, raw
    for n in (63, 64, 65):
        name = b"n" * n + b"=v"
        assert mask_query(name) == _mask_by_definition(name)
    many = b"&".join(b"p%d=v" % i for i in range(33))
    assert mask_query(many) == _mask_by_definition(many)


def test_unsafe_bytes_are_escaped_haproxy_style() -> None:
    assert escape(b"/a b") == "/a#20b"
    assert escape(b'/"x"#') == "/#22x#22#23"
    assert escape(b"/\xc3\xa9\x7f\x01") == "/#C3#A9#7F#01"
    assert escape(b"/plain/path-1.2_~%20") == "/plain/path-1.2_~%20"


def test_date_cache_matches_strftime() -> None:
    cache = DateCache()
    for t in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_720_000_000.042):
        expect = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(int(t)))
        assert cache.httplog(t) == f"{expect}.{int((t - int(t)) * 1000):03d}"
        iso = datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")
        assert cache.iso(t) == iso


def test_syslog_header_is_rfc5424_local0_info() -> None:
    header = SyslogTarget("syslog:udp://127.0.0.1:514", ("127.0.0.1", 514)).header(1_700_000_000.25)
    m = RFC5424.fullmatch(header + "msg")
    assert m is not None, header
    assert m["pri"] == "134"  # local0 (16) * 8 + info (6)
    assert (m["app"], m["procid"], m["msgid"], m["msg"]) == (
        "lbd",
        str(os.getpid()),
        "access",
        "msg",
    )
    assert datetime.fromisoformat(m["timestamp"]).timestamp() == 1_700_000_000.25


async def test_a_stalled_target_drops_lines_and_never_blocks_the_caller(tmp_path: Path) -> None:
    """In-process: the writer thread is stuck on a FIFO nobody reads; the caller (the event loop
    in lbd) keeps returning at once and counts what did not fit in the queue."""
    fifo = tmp_path / "stalled.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    access = AccessLog(str(fifo), "httplog", capacity=50)
    try:
        access._format = lambda ex, elapsed, now: "x" * 200  # no Exchange needed here
        t0 = time.monotonic()
        for _ in range(5000):
            access(None, 0.0)  # type: ignore[arg-type]
        assert time.monotonic() - t0 < 5.0  # generous: a blocking call would never return
        await wait_until(lambda: access.queued == 50, what="a full queue")
        in_flight = 5000 - access.written - access.queue_full - access.queued
        assert access.queue_full > 0
        assert 0 <= in_flight <= BATCH_LINES, in_flight
        assert access.dropped == access.queue_full
    finally:
        t0 = time.monotonic()
        access.close(timeout=0.2)  # the writer is stuck: close() gives up, it does not hang
        assert time.monotonic() - t0 < 2.0
        os.close(reader)


# --- end to end: the kit ----------------------------------------------------------------------


def lbd_log_config(
    port: int, stats_port: int, app_port: int, access: str, fmt: str
) -> dict[str, Any]:
    """Frontend `fe` with two modules and a deny rule; backend `app` (the mock) and `down`
    (nothing listens there: connect refused → 503)."""
    return {
        "global": {
            "log": {"access": access, "format": fmt},
            "stats": {"bind": f"{HOST}:{stats_port}"},
        },
        "defaults": {"timeouts": TEST_TIMEOUTS, "retries": 1},
        "frontends": {
            "fe": {
                "bind": [f"{HOST}:{port}"],
                "modules": [
                    {"name": "dmu", "path_prefix": "/dmu"},
                    {"name": "accueil", "path_prefix": "/accueil"},
                ],
                "rules": [
                    {"when": {"path_prefix": "/admin"}, "deny": 403},
                    {"when": {"path_prefix": "/down"}, "use_backend": "down"},
                ],
                "default_backend": "app",
            }
        },
        "backends": {
            "app": {"servers": [{"name": "s1", "address": f"{HOST}:{app_port}"}]},
            "down": {"servers": [{"name": "gone", "address": f"{HOST}:{free_port()}"}]},
        },
    }


@dataclass
class Lbd:
    proc: LbdProcess
    stats_port: int

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def stdout_path(self) -> Path:
        return self.proc.workdir / f"lbd-{self.proc.port}.stdout"


async def start_lbd(h: Harness, app_port: int, access: str, fmt: str = "httplog") -> Lbd:
    port, stats_port = free_port(), free_port()
    proc = LbdProcess(lbd_log_config(port, stats_port, app_port, access, fmt), h.workdir, port)
    h.procs.append((proc, False))
    await proc.start()
    return Lbd(proc, stats_port)


async def metrics(h: Harness, lbd: Lbd) -> dict[str, float]:
    """`lbd_access_log_*` samples, keyed `name` or `name{label=value}`."""
    session = h.sessions[0] if h.sessions else h.session()
    url = f"http://{HOST}:{lbd.stats_port}/metrics"
    text = ""
    for _ in range(100):  # the stats listener opens just after the frontend
        with contextlib.suppress(OSError):
            async with session.get(url) as resp:
                text = await resp.text()
                break
        await asyncio.sleep(0.05)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("lbd_access_log_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def metrics_when(
    h: Harness, lbd: Lbd, ready: Callable[[dict[str, float]], bool], what: str
) -> dict[str, float]:
    """Poll /metrics until `ready` holds (the writer thread counts after it writes)."""
    m: dict[str, float] = {}
    for _ in range(200):
        m = await metrics(h, lbd)
        if m and ready(m):
            return m
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}: {m}")


@dataclass
class Sent:
    """One request as the client saw it."""

    name: str
    client_port: int
    before: float  # wall clock, just before connecting
    after: float  # wall clock, response read
    status: int
    body_len: int
    raw_len: int


async def one_request(port: int, name: str, data: bytes) -> Sent:
    before = time.time()
    wire = await Wire.connect(port)
    try:
        client_port = wire.writer.get_extra_info("sockname")[1]
        await wire.send(data)
        resp = await wire.read_response()
        after = time.time()
    finally:
        wire.close()
    return Sent(name, client_port, before, after, resp.status, len(resp.body), len(resp.raw))


POST_BODY = f"patient={SECRET}".encode() * 50
SECRET_HEADERS = (
    ("Host", "ehr.test"),
    ("Authorization", f"Bearer {SECRET}"),
    ("Cookie", f"JSESSIONID={SECRET}"),
)


async def drive_traffic(h: Harness, lbd: Lbd, mock_url: str) -> dict[str, Sent]:
    """The traffic every format test parses back, one connection per request."""
    sent = [
        await one_request(lbd.port, "ok", request("GET", f"/accueil/patient?ipp={SECRET}&tab=bio",
                                                  SECRET_HEADERS)),
        await one_request(lbd.port, "dmu", request("GET", "/dmu/liste")),
        await one_request(lbd.port, "not_found", request("GET", "/nothing/here")),
        await one_request(lbd.port, "denied", request("GET", "/admin/users?id=1")),
        await one_request(lbd.port, "refused", request("GET", "/down/x")),
        await one_request(lbd.port, "post", request("POST", "/comptes-rendus/cr", body=POST_BODY)),
    ]  # fmt: skip
    session = h.session()
    async with session.get(f"{mock_url}/_mock/latency?ms=150") as resp:
        assert resp.status == 200
    try:
        sent.append(await one_request(lbd.port, "slow", request("GET", "/accueil/slow")))
    finally:
        async with session.get(f"{mock_url}/_mock/reset") as resp:
            assert resp.status == 200
    by_name = {s.name: s for s in sent}
    statuses = {n: s.status for n, s in by_name.items()}
    assert statuses == {"ok": 200, "dmu": 200, "not_found": 404, "denied": 403, "refused": 503,
                        "post": 200, "slow": 200}  # fmt: skip
    return by_name


# What each request's line must say, in httplog spelling (`None` = no backend or server).
EXPECTED: dict[str, dict[str, Any]] = {
    "ok": {"backend": "app", "server": "s1", "module": "accueil", "method": "GET",
           "path": "/accueil/patient?ipp=***&tab=***", "termination_state": "----", "retries": 0},
    "dmu": {"backend": "app", "server": "s1", "module": "dmu", "method": "GET",
            "path": "/dmu/liste", "termination_state": "----", "retries": 0},
    "not_found": {"backend": "app", "server": "s1", "module": "other", "method": "GET",
                  "path": "/nothing/here", "termination_state": "----", "retries": 0},
    "denied": {"backend": None, "server": None, "module": "other", "method": "GET",
               "path": "/admin/users?id=***", "termination_state": "PR--", "retries": 0},
    "refused": {"backend": "down", "server": "gone", "module": "other", "method": "GET",
                "path": "/down/x", "termination_state": "SC--", "retries": 1},
    "post": {"backend": "app", "server": "s1", "module": "other", "method": "POST",
             "path": "/comptes-rendus/cr", "termination_state": "----", "retries": 0},
    "slow": {"backend": "app", "server": "s1", "module": "accueil", "method": "GET",
             "path": "/accueil/slow", "termination_state": "----", "retries": 0},
}  # fmt: skip


def check_record(rec: dict[str, Any], s: Sent, accept: float) -> None:
    """Fields common to both formats, with backend/server already mapped to None if absent."""
    exp = EXPECTED[s.name]
    for key, value in exp.items():
        assert rec[key] == value, (s.name, key, rec)
    assert rec["client_ip"] == HOST
    assert rec["frontend"] == "fe"
    assert rec["status"] == s.status
    assert rec["http_version"] == "1.1"
    # The request's first byte arrived between connect and response.
    assert s.before - CLOCK_SLACK <= accept <= s.after + CLOCK_SLACK, (s.name, s.before, accept)
    ta, tr, tw, tc, tr_server = rec["ta"], rec["tr"], rec["tw"], rec["tc"], rec["tr_server"]
    assert 0 <= ta <= (s.after - s.before + CLOCK_SLACK) * 1000, (s.name, rec)
    assert 0 <= tr <= ta
    assert tr + max(tw, 0) + max(tc, 0) + max(tr_server, 0) <= ta, (s.name, rec)
    # A server that refused every connection is named (as HAProxy does) but never answered.
    served = exp["server"] is not None and not exp["termination_state"].startswith("SC")
    if served:
        assert (tw >= 0, tc >= 0, tr_server >= 0) == (True, True, True), (s.name, rec)
        # bytes_read: at least the body; HAProxy also counts the head (lbd: see the report).
        assert s.body_len <= rec["bytes_read"] <= s.raw_len, (s.name, rec, s)
        assert rec["beconn"] >= 1 and rec["srv_conn"] >= 1
    else:
        assert (tc, tr_server) == (-1, -1), (s.name, rec)
        assert tw == (0 if exp["backend"] is not None else -1)
        assert 0 < rec["bytes_read"] <= s.raw_len
        assert rec["srv_conn"] == (1 if exp["server"] else 0)  # the refusing server is counted
    assert rec["feconn"] >= 1 and rec["actconn"] >= rec["feconn"]
    assert (rec["srv_queue"], rec["backend_queue"]) == (0, 0)
    if s.name == "slow":
        # The mock waited 150 ms before its head; the loop's clock is read once per iteration
        # (millisecond resolution), so lbd may see a few ms less.
        assert tr_server >= 140 and ta >= 140, rec


async def read_lines(path: Path, n: int) -> list[str]:
    lines: list[str] = []

    def enough() -> bool:
        nonlocal lines
        with contextlib.suppress(FileNotFoundError):
            lines = path.read_text().splitlines()
        return len(lines) >= n

    await wait_until(enough, what=f"{n} lines in {path.name}")
    return lines


def by_port(
    records: list[dict[str, Any]], sent: dict[str, Sent]
) -> Iterator[tuple[dict[str, Any], Sent]]:
    ports = {r["client_port"]: r for r in records}
    assert len(ports) == len(records)
    for s in sent.values():
        assert s.client_port in ports, (s, records)
        yield ports[s.client_port], s


def assert_no_secret(text: str) -> None:
    assert SECRET not in text  # query value, Authorization, Cookie, request body
    assert "Bearer" not in text and "JSESSIONID" not in text


# --- end to end: formats ----------------------------------------------------------------------


async def test_httplog_fields_parse_back_from_real_traffic(
    harness: Harness, tmp_path: Path
) -> None:
    mock = await harness.mock_backend("ehr1")
    log_path = tmp_path / "access.log"
    lbd = await start_lbd(harness, mock.port, str(log_path), "httplog")

    sent = await drive_traffic(harness, lbd, mock.url)
    lines = await read_lines(log_path, len(sent))

    assert len(lines) == len(sent)
    records = []
    for line in lines:
        m = HTTPLOG.fullmatch(line)
        assert m is not None, line
        rec: dict[str, Any] = m.groupdict()
        for key in INT_FIELDS:
            rec[key] = int(rec[key])
        assert (rec.pop("req_cookie"), rec.pop("resp_cookie")) == ("-", "-")
        records.append(rec)
    for rec, s in by_port(records, sent):
        # httplog spells a missing backend as the frontend's name, a missing server <NOSRV>.
        if rec["server"] == "<NOSRV>":
            rec["server"] = None
        if EXPECTED[s.name]["backend"] is None:
            assert rec["backend"] == "fe"
            rec["backend"] = None
        accept = datetime.strptime(rec["accept_date"], "%d/%b/%Y:%H:%M:%S.%f").timestamp()
        check_record(rec, s, accept)
    assert_no_secret(log_path.read_text())


async def test_json_fields_parse_back_from_real_traffic_on_stdout(harness: Harness) -> None:
    mock = await harness.mock_backend("ehr1")
    lbd = await start_lbd(harness, mock.port, "stdout", "json")

    sent = await drive_traffic(harness, lbd, mock.url)
    lines = await read_lines(lbd.stdout_path, len(sent))

    records = [json.loads(line) for line in lines]
    for rec in records:
        assert set(rec) == JSON_KEYS, rec
    for rec, s in by_port(records, sent):
        accept = datetime.fromisoformat(rec["accept_date"])
        assert accept.tzinfo is not None
        check_record(rec, s, accept.timestamp())
        assert rec["bytes_uploaded"] == (len(POST_BODY) if s.name == "post" else 0)
        assert isinstance(rec["termination_state"], str)
    assert_no_secret(lbd.stdout_path.read_text())
    m = await metrics_when(
        harness, lbd, lambda m: m["lbd_access_log_lines_written_total"] == len(sent), "written"
    )
    assert m["lbd_access_log_lines_dropped_total{reason=queue_full}"] == 0
    assert m["lbd_access_log_lines_dropped_total{reason=write_error}"] == 0


# --- end to end: targets ----------------------------------------------------------------------


async def test_sigusr1_reopens_the_file_after_logrotate_renamed_it(
    harness: Harness, tmp_path: Path
) -> None:
    mock = await harness.mock_backend("ehr1")
    log_path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    lbd = await start_lbd(harness, mock.port, str(log_path))
    await metrics(harness, lbd)  # lbd is past start-up: its signal handlers are in place
    first = await one_request(lbd.port, "first", request("GET", "/accueil/before-rotate"))
    await read_lines(log_path, 1)

    log_path.rename(rotated)  # logrotate: rename, then postrotate sends SIGUSR1
    second = await one_request(lbd.port, "second", request("GET", "/accueil/between"))
    await read_lines(rotated, 2)  # still written through the open descriptor
    os.kill(lbd.proc.pid, signal.SIGUSR1)
    await wait_until(log_path.exists, what="the reopened file")
    third = await one_request(lbd.port, "third", request("GET", "/accueil/after-rotate"))

    new_lines = await read_lines(log_path, 1)
    old_lines = rotated.read_text().splitlines()
    assert [" /accueil/after-rotate " in line for line in new_lines] == [True]
    assert f":{third.client_port} " in new_lines[0]
    # Lines written before the reopen stay in the renamed file, in order; none is lost.
    assert len(old_lines) == 2
    assert f":{first.client_port} " in old_lines[0] and "/accueil/before-rotate" in old_lines[0]
    assert f":{second.client_port} " in old_lines[1] and "/accueil/between" in old_lines[1]
    assert oct(log_path.stat().st_mode & 0o777) == oct(0o640)
    assert "access log " + str(log_path) + " reopened" in lbd.proc.stderr()


async def recv_datagram(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)


def check_syslog(datagram: bytes, pid: int, path: str) -> None:
    m = RFC5424.fullmatch(datagram.decode())
    assert m is not None, datagram
    assert m["pri"] == "134"  # facility local0, severity info
    assert (m["app"], m["procid"], m["msgid"]) == ("lbd", str(pid), "access")
    assert m["hostname"] == socket.gethostname()
    stamp = datetime.fromisoformat(m["timestamp"])
    assert stamp.tzinfo is not None and abs(stamp.timestamp() - time.time()) < 30
    line = HTTPLOG.fullmatch(m["msg"])
    assert line is not None, m["msg"]
    assert line["path"] == path and line["backend"] == "app" and line["status"] == "200"


async def test_syslog_over_udp_is_rfc5424(harness: Harness) -> None:
    mock = await harness.mock_backend("ehr1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    with sock:
        target = f"syslog:udp://{HOST}:{sock.getsockname()[1]}"
        lbd = await start_lbd(harness, mock.port, target)
        await one_request(lbd.port, "ok", request("GET", "/accueil/x?ipp=42"))
        check_syslog(await recv_datagram(sock), lbd.proc.pid, "/accueil/x?ipp=***")


async def test_syslog_over_a_unix_datagram_socket(harness: Harness, tmp_path: Path) -> None:
    mock = await harness.mock_backend("ehr1")
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    with sock:
        lbd = await start_lbd(harness, mock.port, f"syslog:unix:{path}")
        await one_request(lbd.port, "ok", request("GET", "/dmu/a"))
        check_syslog(await recv_datagram(sock), lbd.proc.pid, "/dmu/a")


# --- end to end: a target that stalls or fails ------------------------------------------------


async def flood(port: int, connections: int, per_connection: int, timeout: float = 30.0) -> int:
    """Pipelined keep-alive GETs; returns how many 200s came back (bounded in time)."""
    one = request("GET", "/flood?id=1")

    async def run() -> int:
        wire = await Wire.connect(port)
        try:
            wire.writer.write(one * per_connection)
            got = 0
            tail = b""
            for _ in range(per_connection * 10):
                data = await wire.read(1 << 16, timeout)
                if not data:
                    break
                got += (tail + data).count(b"HTTP/1.1 200 ")
                tail = data[-16:]
                if got >= per_connection:
                    break
            return got
        finally:
            wire.close()

    results = await asyncio.wait_for(asyncio.gather(*(run() for _ in range(connections))), timeout)
    return sum(results)


async def test_a_stalled_fifo_drops_lines_but_requests_flow(
    harness: Harness, tmp_path: Path
) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: writes stall
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        lbd = await start_lbd(harness, backend.port, str(fifo))
        total = QUEUE_LINES + 4000
        assert await flood(lbd.port, 16, total // 16) == total  # every request answered

        m = await metrics(harness, lbd)
        assert m["lbd_access_log_queued_lines"] == QUEUE_LINES
        dropped = m["lbd_access_log_lines_dropped_total{reason=queue_full}"]
        written = m["lbd_access_log_lines_written_total"]
        assert dropped > 0
        assert total - BATCH_LINES <= dropped + written + QUEUE_LINES <= total  # one batch stuck
    finally:
        os.close(reader)  # the stuck write fails (EPIPE); reopening finds no reader (ENXIO)

    m = await metrics_when(
        harness, lbd, lambda m: m["lbd_access_log_queued_lines"] == 0, "the queue to drain"
    )
    lost = m["lbd_access_log_lines_dropped_total{reason=write_error}"]
    assert m["lbd_access_log_errors_total"] >= 1
    assert (
        lost
        + m["lbd_access_log_lines_dropped_total{reason=queue_full}"]
        + m["lbd_access_log_lines_written_total"]
        == total
    )  # every line accounted for
    assert await flood(lbd.port, 2, 50) == 100  # and lbd still serves
    err = lbd.proc.stderr()
    assert err.count("access log queue full") == 1  # once a minute at most
    assert f"access log {fifo}: cannot write" in err


async def test_a_closed_stdout_pipe_is_counted_not_fatal(harness: Harness, tmp_path: Path) -> None:
    mock = await harness.mock_backend("ehr1")
    port, stats_port = free_port(), free_port()
    proc = LbdProcess(lbd_log_config(port, stats_port, mock.port, "stdout", "json"), tmp_path, port)
    proc.path.write_text(yaml.safe_dump(proc.config, sort_keys=False))
    with proc.stderr_path.open("wb") as err:
        proc.proc = subprocess.Popen(
            [sys.executable, "-m", "lbd", "run", "-c", str(proc.path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    harness.procs.append((proc, False))  # stopped by the harness: must exit 0, no traceback
    assert proc.proc.stdout is not None
    proc.proc.stdout.close()  # nobody will ever read lbd's stdout: writes get EPIPE
    lbd = Lbd(proc, stats_port)
    m = await metrics(harness, lbd)
    assert m, "the stats listener never answered"

    for i in range(3):
        sent = await one_request(port, f"r{i}", request("GET", f"/accueil/{i}"))
        assert sent.status == 200
        await asyncio.sleep(0.05)  # separate batches
    await wait_until(lambda: "cannot write" in proc.stderr(), what="the write error on stderr")
    m = await metrics_when(
        harness,
        lbd,
        lambda m: m["lbd_access_log_lines_dropped_total{reason=write_error}"] == 3,
        "3 lost lines",
    )
    assert m["lbd_access_log_errors_total"] >= 1
    assert m["lbd_access_log_lines_written_total"] == 0
    assert "Broken pipe" in proc.stderr()


async def test_a_path_that_cannot_be_opened_is_counted_not_fatal(
    harness: Harness, tmp_path: Path
) -> None:
    mock = await harness.mock_backend("ehr1")
    missing = tmp_path / "no-such-dir" / "access.log"
    lbd = await start_lbd(harness, mock.port, str(missing))

    for i in range(3):
        assert (await one_request(lbd.port, "r", request("GET", f"/accueil/{i}"))).status == 200
    await wait_until(lambda: "cannot open" in lbd.proc.stderr(), what="the open error on stderr")
    m = await metrics_when(
        harness,
        lbd,
        lambda m: m["lbd_access_log_lines_dropped_total{reason=write_error}"] == 3,
        "3 lost lines",
    )
    assert m["lbd_access_log_errors_total"] >= 1
    assert m["lbd_access_log_lines_written_total"] == 0
    assert lbd.proc.stderr().count("cannot open") == 1  # reported once, retried quietly


async def test_a_syslog_port_nobody_listens_on_is_counted_not_fatal(harness: Harness) -> None:
    mock = await harness.mock_backend("ehr1")
    lbd = await start_lbd(harness, mock.port, f"syslog:udp://{HOST}:{free_port()}")

    errors = 0.0
    for i in range(20):  # the first datagram leaves; ICMP port unreachable fails a later one
        assert (await one_request(lbd.port, "r", request("GET", f"/accueil/{i}"))).status == 200
        await asyncio.sleep(0.02)
        errors = (await metrics(harness, lbd))["lbd_access_log_errors_total"]
        if errors:
            break
    assert errors >= 1
    assert "Connection refused" in lbd.proc.stderr()
