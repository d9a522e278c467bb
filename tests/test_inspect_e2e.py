"""Request inspection, end to end: a real lbd, raw clients, raw recording backends.

Every test checks both what the client got and the EXACT bytes the backend received: a refusal
leaves nothing at the server (a smuggled request appended to every bad one never arrives), a
logged target reaches it unchanged, a normalized one arrives normalized. Routing is checked to
run on the normalized path (a deny rule on /admin holds against dot-segments and encodings), and
the capture store, counters, /stats, /stats.json, `show errors` and the access log are checked to
hold exact counts and never a patient identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import (
    HOST,
    Harness,
    LbdProcess,
    RawBackend,
    Wire,
    echo_target,
    free_port,
    lbd_config,
    request,
    wait_until,
)

from lbd.admin.client import send_command

pytestmark = pytest.mark.timeout(60)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
PATIENT = "2850775123456"  # a NIR-shaped patient identifier


def forwarded(method: str, target: str, host: str = "ehr.test", extra: str = "") -> bytes:
    """The head lbd sends for a request that carried only `Host` (and `extra` lines)."""
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}X-Forwarded-For: 127.0.0.1\r\n"
        f"X-Forwarded-Proto: http\r\nX-Forwarded-Host: {host}\r\n\r\n"
    ).encode("latin-1")


def raw_get(target: bytes, host: bytes = b"ehr.test", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for a unix socket (108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="lbdi-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Lbd:
    """One lbd with a stats listener, and optionally an admin socket and an access log."""

    def __init__(self, proc: LbdProcess, stats_port: int, admin: Path | None) -> None:
        self.proc = proc
        self.port = proc.port
        self.stats_port = stats_port
        self.admin = admin

    async def stats_json(self) -> dict[str, Any]:
        return json.loads(await self.stats_get("/stats.json"))  # type: ignore[no-any-return]

    async def frontend(self) -> dict[str, Any]:
        [fe] = (await self.stats_json())["frontends"]
        return fe  # type: ignore[no-any-return]

    async def stats_get(self, path: str) -> str:
        wire = await Wire.connect(self.stats_port)
        try:
            line = f"GET {path} HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n"
            await wire.send(line.encode())
            resp = await wire.read_response()
        finally:
            wire.close()
        assert resp.status == 200, resp.raw[:300]
        return resp.body.decode()

    async def ctl(self, command: str) -> str:
        assert self.admin is not None
        return await asyncio.to_thread(send_command, str(self.admin), command, 10.0)


async def start_lbd(
    harness: Harness,
    servers: list[int],
    *,
    frontend: dict[str, Any] | None = None,
    admin: Path | None = None,
    access_log: str = "off",
    timeouts: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
) -> Lbd:
    port = free_port()
    stats_port = free_port()
    cfg = lbd_config(port, servers, timeouts=timeouts, limits=limits, access_log=access_log)
    cfg["global"]["stats"] = {"bind": f"{HOST}:{stats_port}"}
    if admin is not None:
        cfg["global"]["admin_socket"] = str(admin)
    cfg["frontends"]["fe"].update(frontend or {})
    proc = LbdProcess(cfg, harness.workdir, port)
    harness.procs.append((proc, False))
    await proc.start()
    return Lbd(proc, stats_port, admin)


async def send_alone(harness: Harness, port: int, data: bytes) -> Wire:
    client = await harness.connect(port)
    await client.send(data)
    return client


class Received:
    """What a backend received since the last `take()`, connection by connection (a pooled
    connection may be reused, so new bytes can land on an older wire)."""

    def __init__(self, backend: RawBackend) -> None:
        self.backend = backend
        self.seen: list[int] = []

    def take(self) -> bytes:
        wires = self.backend.wires
        self.seen += [0] * (len(wires) - len(self.seen))
        out = b""
        for i, wire in enumerate(wires):
            out += bytes(wire.received[self.seen[i] :])
            self.seen[i] = len(wire.received)
        return out


async def refused(harness: Harness, port: int, data: bytes, status: int) -> None:
    client = await send_alone(harness, port, data)
    resp = await client.read_response()
    assert resp.status == status, (data, resp.raw)
    assert resp.header("connection") == "close", (data, resp.raw)
    assert await client.at_eof(), data


# --- one table of refusals: llhttp's, classify's and the request-target's ------------------------

POST_CHUNKED = b"POST /up HTTP/1.1\r\nHost: ehr.test\r\nTransfer-Encoding: chunked\r\n\r\n"

REFUSALS: list[tuple[str, bytes, int, str]] = [
    # llhttp (strict) refuses these; lbd names them
    ("obs-fold", raw_get(b"/", extra=b"X-A: b\r\n c\r\n"), 400, "obs-fold"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : ehr.test\r\n\r\n", 400, "bad-header-name"),
    ("bad-name-byte", raw_get(b"/", extra=b"X(A): b\r\n"), 400, "bad-header-name"),
    ("bare-cr", raw_get(b"/", extra=b"X-A: b\rX-B: c\r\n"), 400, "bare-cr"),
    ("bare-lf", b"GET / HTTP/1.1\r\nHost: ehr.test\nX-B: c\r\n\r\n", 400, "bare-lf"),
    ("bare-lf-line", b"GET / HTTP/1.1\nHost: ehr.test\n\n", 400, "bad-line-ending"),
    ("nul-in-value", raw_get(b"/", extra=b"X-A: b\x00c\r\n"), 400, "bad-header-value"),
    ("space-in-target", raw_get(b"/a b"), 400, "target-bad-char"),
    ("nul-in-target", raw_get(b"/a\x00b"), 400, "target-bad-char"),
    ("ctl-in-target", raw_get(b"/a\x1bb"), 400, "target-bad-char"),
    ("del-in-target", raw_get(b"/a\x7fb"), 400, "target-bad-char"),
    ("non-ascii-target", raw_get("/café".encode()), 400, "target-bad-char"),
    ("unknown-method", b"FOO / HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501, "unknown-method"),
    ("lower-method", b"get / HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501, "unknown-method"),
    ("http-1.2", b"GET / HTTP/1.2\r\nHost: ehr.test\r\n\r\n", 505, "bad-version"),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "bad-version"),
    ("chunk-size", POST_CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400, "bad-chunk"),
    ("chunk-size-space", POST_CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", 400, "bad-chunk"),
    ("chunk-overrun", POST_CHUNKED + b"3\r\nabcdef\r\n0\r\n\r\n", 400, "bad-chunk"),
    ("chunk-bare-lf", POST_CHUNKED + b"3\nabc\n0\n\n", 400, "bad-chunk"),
    # llhttp lets these through; classify refuses them
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: ehr.test\r\n\r\n", 505, "bad-version"),
    ("rtsp", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 505, "bad-protocol"),
    ("missing-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "missing-host"),
    ("duplicate-host", raw_get(b"/", extra=b"Host: other.test\r\n"), 400, "duplicate-host"),
    ("host-userinfo", raw_get(b"/", host=b"user@ehr.test"), 400, "host-userinfo"),
    ("bad-host", raw_get(b"/", host=b"ehr.test:80x"), 400, "bad-host"),
    ("trace", b"TRACE / HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501, "method-not-allowed"),
    ("propfind", b"PROPFIND / HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501, "method-not-allowed"),
    ("connect", b"CONNECT ehr.test:443 HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501, "connect-method"),
    # the request-target, under the default url_policy (reject)
    ("dot-segment", raw_get(b"/static/../x"), 400, "dot-segment"),
    ("above-root", raw_get(b"/%2e%2e/etc/passwd"), 400, "dot-segment-above-root"),
    ("hidden-dots", raw_get(b"/a/%252e%252e/b"), 400, "hidden-dot-segment"),
    ("double-encoding", raw_get(b"/%2561dmin"), 400, "double-encoding"),
    ("bad-percent", raw_get(b"/a%zz"), 400, "bad-percent-encoding"),
    ("short-percent", raw_get(b"/a%4"), 400, "bad-percent-encoding"),
    ("encoded-nul", raw_get(b"/a%00b"), 400, "encoded-nul"),
    ("encoded-crlf", raw_get(b"/a%0d%0aX:%20y"), 400, "encoded-control"),
    ("backslash", raw_get(b"/a\\b"), 400, "backslash"),
    ("fragment", raw_get(b"/a#frag"), 400, "fragment"),
    ("bad-char", raw_get(b"/a<b>"), 400, "target-bad-char"),
    ("asterisk-get", raw_get(b"*"), 400, "asterisk-form"),
    ("absolute-mismatch", raw_get(b"http://other.test/x"), 400, "absolute-form-host-mismatch"),
    ("absolute-userinfo", raw_get(b"http://u@ehr.test/x"), 400, "userinfo"),
    ("absolute-ftp", raw_get(b"ftp://ehr.test/x"), 400, "bad-target-form"),
    ("absolute-empty-path", raw_get(b"http://ehr.test"), 400, "empty-path"),
    ("uri-too-long", raw_get(b"/" + b"a" * 9000), 414, "uri-too-long"),
]


async def test_each_refusal_answers_closes_and_reaches_no_server(harness: Harness) -> None:
    """Every framing, head and target refusal: the status, `Connection: close`, EOF, a request
    smuggled right behind it never parsed, nothing at the server, and exact counters."""
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port])
    got = Received(backend)
    chunked_head = forwarded("POST", "/up").replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    for name, data, status, reason in REFUSALS:
        client = await send_alone(harness, lbd.port, data + SMUGGLED)
        resp = await client.read_response()
        assert resp.status == status, (name, resp.raw)
        assert resp.header("connection") == "close", name
        assert await client.at_eof(), name
        # A body error comes after a valid head, which may already be on a pooled server
        # connection (then aborted); not one byte after the error, nor the smuggled request.
        allowed = (b"", chunked_head) if reason == "bad-chunk" else (b"",)
        assert got.take() in allowed, (name, backend.received())

    barrier = await send_alone(harness, lbd.port, raw_get(b"/barrier"))
    assert (await barrier.read_response()).body == b"/barrier"
    assert got.take() == forwarded("GET", "/barrier")
    assert b"/smuggled" not in backend.received()
    assert [r.target for r in backend.requests] == ["/barrier"]

    fe = await lbd.frontend()
    expected = Counter(reason for _, _, _, reason in REFUSALS)
    assert fe["malformed"] == dict(sorted(expected.items()))
    captured = {(e["reason"], e["module"]): e["count"] for e in fe["captures"]}
    by_reason = Counter[str]()
    for (reason, _module), count in captured.items():
        by_reason[reason] += count
    assert by_reason == expected
    for entry in fe["captures"]:
        assert entry["actions"]["rejected"] == entry["count"]
        for sample in entry["samples"]:
            assert sample["client"].startswith("127.0.0.1:")
            assert sample["status"] in (400, 414, 501, 505)
            assert len(sample["excerpt"]) <= 400


async def test_http09_gets_505_at_once(harness: Harness) -> None:
    """`GET /` CRLF and nothing more: llhttp would wait for headers until timeouts.http_request
    (408); lbd sees the HTTP/0.9 request line and answers 505 right away."""
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port], timeouts={"http_request": "30s"})
    client = await send_alone(harness, lbd.port, b"GET /\r\n")
    resp = await client.read_response(timeout=3.0)
    assert resp.status == 505
    assert await client.at_eof()
    # Also on a kept-alive connection, after a good request.
    client = await send_alone(harness, lbd.port, raw_get(b"/first"))
    assert (await client.read_response()).status == 200
    await client.send(b"GET /second\r\n")
    resp = await client.read_response(timeout=3.0)
    assert resp.status == 505
    assert backend.received() == forwarded("GET", "/first")
    assert (await lbd.frontend())["malformed"] == {"http09": 2}


# --- after a framing error, nothing more reaches the server ---------------------------------------


async def until_eof(wire: Wire) -> None:
    await wire.read_until_eof(timeout=10.0)


async def test_bad_chunk_after_the_head_went_out_aborts_the_server_leg(harness: Harness) -> None:
    backend = await harness.raw_backend(until_eof)
    lbd = await start_lbd(harness, [backend.port])
    client = await send_alone(harness, lbd.port, POST_CHUNKED + b"5\r\nhello\r\n")
    head = forwarded("POST", "/up", extra="").replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    expected = head + b"5\r\nhello\r\n"
    await wait_until(lambda: backend.received() == expected, what="head and first chunk")

    await client.send(b"3\r\nabcdef\r\n0\r\n\r\n" + SMUGGLED)  # overrun, then a smuggled request
    resp = await client.read_response()
    assert resp.status == 400 and resp.header("connection") == "close"
    assert await client.at_eof()
    await wait_until(lambda: backend.wires[0].reader.at_eof(), what="server leg closed")
    assert backend.received() == expected  # not one byte after the error
    assert backend.accepted == 1


async def test_chunked_body_over_the_limit_stops_at_the_limit(harness: Harness) -> None:
    backend = await harness.raw_backend(until_eof)
    lbd = await start_lbd(harness, [backend.port], limits={"max_body_bytes": "1KiB"})
    client = await send_alone(harness, lbd.port, POST_CHUNKED + b"400\r\n" + b"a" * 1024 + b"\r\n")
    head = forwarded("POST", "/up").replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    expected = head + b"400\r\n" + b"a" * 1024 + b"\r\n"
    await wait_until(lambda: backend.received() == expected, what="the first KiB")
    await client.send(b"1\r\nb\r\n0\r\n\r\n" + SMUGGLED)
    resp = await client.read_response()
    assert resp.status == 413 and await client.at_eof()
    await wait_until(lambda: backend.wires[0].reader.at_eof(), what="server leg closed")
    assert backend.received() == expected


async def test_declared_body_over_the_limit_gets_413_before_100_continue(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port], limits={"max_body_bytes": "1KiB"})
    head = (
        b"POST /up HTTP/1.1\r\nHost: ehr.test\r\nContent-Length: 2048\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    client = await send_alone(harness, lbd.port, head)
    resp = await client.read_response()
    assert resp.status == 413  # the first status line: never a 100 Continue before it
    assert bytes(client.received).startswith(b"HTTP/1.1 413 ")
    assert await client.at_eof()
    assert backend.accepted == 0  # not even a connection to a server


async def test_h2c_upgrade_is_stripped(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port])
    data = raw_get(
        b"/h2c",
        extra=b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    )
    client = await send_alone(harness, lbd.port, data)
    resp = await client.read_response()
    assert resp.status == 200 and resp.header("upgrade") is None
    await client.send(raw_get(b"/again"))  # still HTTP/1.1 on the same connection
    assert (await client.read_response()).body == b"/again"
    assert backend.received() == forwarded("GET", "/h2c") + forwarded("GET", "/again")


async def test_allowed_methods(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(
        harness, [backend.port], frontend={"allowed_methods": ["GET", "PROPFIND"]}
    )
    propfind = b"PROPFIND /dav HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
    client = await send_alone(harness, lbd.port, propfind)
    assert (await client.read_response()).status == 200
    await refused(harness, lbd.port, request("POST", "/x", body=b"abc"), 501)
    await refused(harness, lbd.port, b"DELETE /x HTTP/1.1\r\nHost: ehr.test\r\n\r\n", 501)
    assert backend.received() == forwarded("PROPFIND", "/dav")
    assert (await lbd.frontend())["malformed"] == {"method-not-allowed": 2}


# --- url_policy: what reaches the server, and routing on the normalized path ----------------------

ADMIN_RULES = [
    {"when": {"path_prefix": "/admin"}, "deny": 403},
    {"when": {"path_prefix": "/static"}, "use_backend": "app"},
]

# target → outcome under (reject, log, normalize): a status the client gets from lbd itself, or
# the target the server receives (then the client gets the server's 200).
POLICY_TABLE: list[tuple[bytes, tuple[int | str, int | str, int | str]]] = [
    # a deny rule on /admin holds against every spelling
    (b"/admin", (403, 403, 403)),
    (b"//admin", (403, 403, 403)),
    (b"/%61dmin", (403, 403, 403)),
    (b"/admin%2Fx", (403, 403, 403)),
    (b"/./admin", (400, 403, 403)),
    (b"/static/../admin", (400, 403, 403)),
    (b"/static/%2e%2e/admin", (400, 403, 403)),
    (b"/static/%2E%2e/admin/x", (400, 403, 403)),
    (b"/static\\..\\admin", (400, 403, 403)),
    (b"/static/..;/admin", (400, 403, 400)),  # Tomcat's reading: routed on it, never normalized
    (b"/static/%252e%252e/admin", (400, 403, 400)),  # double-decoded reading
    (b"/static%2F..%2Fadmin", (400, 403, 400)),  # %2F-decoding reading
    (b"/%2561dmin", (400, 403, 400)),
    (b"http://ehr.test/static/../admin", (400, 403, 403)),
    # elsewhere: unchanged under reject/log, normalized under normalize
    (b"/static/x/../y", (400, "/static/x/../y", "/static/y")),
    (b"/ok%7efile", ("/ok%7efile", "/ok%7efile", "/ok~file")),
    (b"//static//a", ("//static//a", "//static//a", "/static/a")),
    (b"/frag#x", (400, "/frag#x", "/frag")),
    (b"/a%00", (400, "/a%00", 400)),
    (b"/a/%2e%2e/%2e%2e/b", (400, "/a/%2e%2e/%2e%2e/b", 400)),
    (b"http://ehr.test/abs?q=1", ("/abs?q=1", "/abs?q=1", "/abs?q=1")),
    (b"http://ehr.test", (400, "/", "/")),
]


@pytest.mark.parametrize(("policy", "column"), [("reject", 0), ("log", 1), ("normalize", 2)])
async def test_url_policy_and_routing_on_the_normalized_path(
    harness: Harness, policy: str, column: int
) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(
        harness, [backend.port], frontend={"url_policy": policy, "rules": ADMIN_RULES}
    )
    got = Received(backend)
    for target, outcomes in POLICY_TABLE:
        outcome = outcomes[column]
        client = await send_alone(harness, lbd.port, raw_get(target))
        resp = await client.read_response()
        if isinstance(outcome, int):
            assert resp.status == outcome, (policy, target, resp.raw)
            assert got.take() == b"", (policy, target)
        else:
            assert resp.status == 200, (policy, target, resp.raw)
            assert got.take() == forwarded("GET", outcome), (policy, target)
    fe = await lbd.frontend()
    actions = Counter[str]()
    for entry in fe["captures"]:
        for action, n in entry["actions"].items():
            actions[action] += n
    # Every violation is recorded under the action the policy took.
    expected_action = {"reject": "rejected", "log": "logged", "normalize": "normalized"}[policy]
    assert actions[expected_action] > 0
    assert sum(fe["malformed"].values()) == sum(actions.values())


async def test_dry_run_records_would_reject_and_forwards_unchanged(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(
        harness,
        [backend.port],
        frontend={"url_policy": "reject", "url_policy_dry_run": True, "rules": ADMIN_RULES},
    )
    got = Received(backend)
    for target, status in ((b"/static/x/../y", 200), (b"/static/../admin", 403)):
        client = await send_alone(harness, lbd.port, raw_get(target))
        assert (await client.read_response()).status == status
    assert got.take() == forwarded("GET", "/static/x/../y")  # /admin stays denied
    fe = await lbd.frontend()
    assert fe["malformed"] == {"dot-segment": 2}
    [entry] = fe["captures"]
    assert (entry["reason"], entry["module"], entry["count"]) == ("dot-segment", "other", 2)
    assert entry["actions"]["would-reject"] == 2


async def test_module_url_policy_overrides_the_frontend(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    modules = [
        {"name": "dmu", "path_prefix": "/dmu", "url_policy": "normalize"},
        {"name": "static", "path_prefix": "/static", "url_policy": "log"},
    ]
    lbd = await start_lbd(
        harness, [backend.port], frontend={"url_policy": "reject", "modules": modules}
    )
    got = Received(backend)
    cases: list[tuple[bytes, int, bytes]] = [
        (b"/dmu/./a", 200, forwarded("GET", "/dmu/a")),
        (b"/static/./a", 200, forwarded("GET", "/static/./a")),
        (b"/dmu/../static/b", 200, forwarded("GET", "/dmu/../static/b")),  # module: static
        (b"/x/./a", 400, b""),
        (b"/dmu/%2e%2e/%2e%2e/a", 400, b""),  # climbs: normalize cannot make it safe
    ]
    for target, status, expected in cases:
        client = await send_alone(harness, lbd.port, raw_get(target))
        assert (await client.read_response()).status == status, target
        assert got.take() == expected, target
    fe = await lbd.frontend()
    table = {
        (e["reason"], e["module"]): {a: n for a, n in e["actions"].items() if n}
        for e in fe["captures"]
    }
    assert table == {
        ("dot-segment", "dmu"): {"normalized": 1},
        ("dot-segment", "static"): {"logged": 2},
        ("dot-segment", "other"): {"rejected": 1},
        ("dot-segment-above-root", "other"): {"rejected": 1},
    }
    modules_seen = {m["name"]: m["requests"] for m in fe["modules"]}
    assert modules_seen == {"dmu": 1, "static": 2, "other": 0}


# --- counters, captures and masking after a known mix --------------------------------------------


async def test_known_mix_exact_counts_and_no_patient_id_anywhere(
    harness: Harness, tmp_path: Path
) -> None:
    backend = await harness.raw_backend(echo_target())
    access = tmp_path / "access.log"
    with short_dir() as sock_dir:
        lbd = await start_lbd(
            harness,
            [backend.port],
            frontend={"modules": [{"name": "dmu", "path_prefix": "/dmu", "url_policy": "log"}]},
            admin=sock_dir / "admin.sock",
            access_log=str(access),
        )
        pid = PATIENT.encode()
        cookie = b"Cookie: JSESSIONID=" + pid + b"; ipp=" + pid + b"\r\n"
        referer = b"Referer: http://ehr.test/search?ipp=" + pid + b"\r\n"
        mix: list[tuple[bytes, int]] = [
            (b"GET /a?ipp=" + pid + b" HTTP/1.1\r\n" + cookie + b"\r\n", 400),  # missing-host
            (b"GET /b HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),  # missing-host
            (raw_get(b"/dossier/../admin?ipp=" + pid, extra=cookie + referer), 400),  # dot-seg
            (raw_get(b"/dmu/./consult?ipp=" + pid + b"#" + pid, extra=cookie), 200),  # logged
            (raw_get(b"/dmu/./consult?nir=" + pid, extra=referer), 200),  # logged
            (raw_get(b"/c?ipp=" + pid, extra=cookie + b"X-A: \x00\r\n"), 400),  # NUL in value
            (raw_get(b"/d?ipp=" + pid, host=b"u" + pid + b"@ehr.test"), 400),  # host-userinfo
            (raw_get(b"/e?ipp=" + pid + b"&x=%zz", extra=cookie), 400),  # bad-percent
        ]
        for data, status in mix:
            client = await send_alone(harness, lbd.port, data)
            assert (await client.read_response()).status == status, data
        assert backend.received() == (
            forwarded("GET", f"/dmu/./consult?ipp={PATIENT}#{PATIENT}", extra=cookie.decode())
            + forwarded("GET", f"/dmu/./consult?nir={PATIENT}", extra=referer.decode())
        )

        fe = await lbd.frontend()
        assert fe["malformed"] == {
            "bad-header-value": 1,
            "bad-percent-encoding": 1,
            "dot-segment": 3,
            "host-userinfo": 1,
            "missing-host": 2,
        }
        table = {
            (e["reason"], e["module"]): (e["count"], {a: n for a, n in e["actions"].items() if n})
            for e in fe["captures"]
        }
        assert table == {
            ("missing-host", "-"): (2, {"rejected": 2}),
            ("dot-segment", "other"): (1, {"rejected": 1}),
            ("dot-segment", "dmu"): (2, {"logged": 2}),
            ("bad-header-value", "-"): (1, {"rejected": 1}),
            ("host-userinfo", "-"): (1, {"rejected": 1}),
            ("bad-percent-encoding", "other"): (1, {"rejected": 1}),
        }
        entries = {(e["reason"], e["module"]): e for e in fe["captures"]}
        logged = entries[("dot-segment", "dmu")]
        assert [s["excerpt"] for s in logged["samples"]] == [
            "GET /dmu/./consult?nir=*** HTTP/1.1",
            "GET /dmu/./consult?ipp=***#*** HTTP/1.1",
        ]
        assert all(s["offset"] == 5 and s["where"] == "target" for s in logged["samples"])
        rejected = entries[("dot-segment", "other")]["samples"][0]
        assert rejected["excerpt"] == "GET /dossier/../admin?ipp=*** HTTP/1.1"
        assert rejected["status"] == 400
        assert (rejected["action"], rejected["method"]) == ("rejected", "GET")
        nul = entries[("bad-header-value", "-")]["samples"][0]
        assert nul["where"] == "message" and nul["offset"] > 0  # located by re-parsing

        errors = await lbd.ctl("show errors")
        assert "fe dmu dot-segment 2 0 2 0 0 " in errors
        assert "fe - missing-host 2 2 0 0 0 " in errors
        html = await lbd.stats_get("/stats")
        assert "Recent malformed requests" in html and "host-userinfo" in html
        raw_json = await lbd.stats_get("/stats.json")

        await wait_until(
            lambda: access.exists() and access.read_text().count("/dmu/") == 2,
            what="the two logged requests in the access log",
        )
        log_text = access.read_text()
        for where, text in (
            ("show errors", errors),
            ("/stats", html),
            ("/stats.json", raw_json),
            ("access log", log_text),
        ):
            assert PATIENT not in text, f"patient id leaked into {where}"
        assert "JSESSIONID=" not in raw_json + errors + html  # cookie values are masked whole


# --- request-body rate ----------------------------------------------------------------------------


async def test_a_trickling_body_is_cut_off(harness: Harness) -> None:
    """One byte every 0.3 s never trips the inactivity timeout (2 s) but falls far below the
    minimum rate (500 B/s over a 2 s window): 408 well before the body could finish."""
    backend = await harness.raw_backend(until_eof)
    lbd = await start_lbd(harness, [backend.port], timeouts={"client": "2s"})
    head = b"POST /slow HTTP/1.1\r\nHost: ehr.test\r\nContent-Length: 100000\r\n\r\n"
    client = await send_alone(harness, lbd.port, head)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = None
    for _ in range(40):  # at most 12 s of trickling
        try:
            await client.send(b"x")
        except ConnectionError:
            break
        with contextlib.suppress(TimeoutError):
            resp = await client.read_response(timeout=0.3)
            break
    assert resp is not None, "lbd never cut the trickling client off"
    assert resp.status == 408
    assert loop.time() - started < 8.0
    assert (await lbd.frontend())["malformed"] == {"body-too-slow": 1}


async def test_a_steady_slow_body_is_not_cut_off(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port], timeouts={"client": "1s"})
    size = 3600
    head = f"POST /steady HTTP/1.1\r\nHost: ehr.test\r\nContent-Length: {size}\r\n\r\n"
    client = await send_alone(harness, lbd.port, head.encode())
    for _ in range(size // 300):  # ~1000 B/s for ~3.6 s: twice the minimum rate
        await client.send(b"y" * 300)
        await asyncio.sleep(0.3)
    resp = await client.read_response()
    assert resp.status == 200 and resp.header("x-body-len") == str(size)
    assert (await lbd.frontend())["malformed"] == {}
