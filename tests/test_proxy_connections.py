"""Proxy core, end to end: connection reuse, HTTP/1.0, pipelining, bodiless responses,
close-delimited responses and round-robin.

A real lbd process sits between real clients and real backends (see e2e_helpers.py). Raw
backends record every byte lbd sent them, so reuse is counted in accepted TCP connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from e2e_helpers import (
    Harness,
    Message,
    Wire,
    chunked,
    echo_target,
    fixed,
    request,
    response,
    serve,
)

from lbd.mock.app import PATTERN

pytestmark = pytest.mark.timeout(30)


async def test_keep_alive_reuses_one_connection_on_both_legs(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)  # one client connection for all 100 requests

    for i in range(100):
        await client.send(request("GET", f"/ka/{i}"))
        resp = await client.read_response()
        assert resp.status == 200, resp.raw
        assert resp.body == f"/ka/{i}".encode()
        assert resp.header("connection") != "close"

    assert [r.target for r in backend.requests] == [f"/ka/{i}" for i in range(100)]
    assert backend.accepted <= 2, f"lbd opened {backend.accepted} server connections for 100"


async def test_http10_without_keep_alive_is_answered_then_closed(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)

    await client.send(b"GET /echo/old HTTP/1.0\r\nHost: ehr.test\r\n\r\n")
    resp = await client.read_response()

    assert resp.status == 200
    assert resp.header("x-server") == "m1"
    assert json.loads(resp.body)["target"] == "/echo/old"
    assert resp.header("connection") == "close"
    assert await client.at_eof(), "lbd kept an HTTP/1.0 connection open without keep-alive"


async def test_http10_keep_alive_keeps_the_connection(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)

    for i in range(3):
        await client.send(
            b"GET /echo/%d HTTP/1.0\r\nHost: ehr.test\r\nConnection: keep-alive\r\n\r\n" % i
        )
        resp = await client.read_response()
        assert resp.status == 200
        assert json.loads(resp.body)["target"] == f"/echo/{i}"
        assert (resp.header("connection") or "").lower() == "keep-alive"
        assert resp.header("content-length") == str(len(resp.body))


async def test_http10_request_without_host_reaches_the_server_with_one(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(b"GET /old HTTP/1.0\r\n\r\n")
    resp = await client.read_response()

    assert resp.status == 200 and resp.body == b"ok"
    sent = backend.requests[0]
    assert sent.start_line == "GET /old HTTP/1.1"
    assert len(sent.values("host")) == 1, sent.raw


async def test_pipelined_head_completed_after_a_pause_is_answered(harness: Harness) -> None:
    # The second request's head starts in the first one's read and ends more than a second
    # later: the connection is not idle meanwhile (lbd trims idle connections after 1 s).
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/one") + b"GET /two HTTP/1.1\r\nHo")
    first = await client.read_response()
    assert (first.status, first.body) == (200, b"/one")
    await asyncio.sleep(1.5)
    await client.send(b"st: t\r\n\r\n")
    second = await client.read_response()
    assert (second.status, second.body) == (200, b"/two")


async def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)
    body = b"pipelined body " * 700

    # The slow first request keeps the others queued behind it inside lbd.
    await client.send(
        request("GET", "/slow?ms=100")
        + request("POST", "/echo/two", body=body)
        + request("GET", "/bytes?n=5")
        + request("HEAD", "/bytes?n=7")
        + request("GET", "/echo/five")
    )

    first = await client.read_response()
    assert (first.status, first.body) == (200, b"slept 100 ms\n")
    second = json.loads((await client.read_response()).body)
    assert (second["method"], second["target"]) == ("POST", "/echo/two")
    assert second["body_length"] == len(body)
    assert second["body_sha256"] == hashlib.sha256(body).hexdigest()
    third = await client.read_response()
    assert third.body == PATTERN[:5]
    fourth = await client.read_response(method="HEAD")
    assert (fourth.status, fourth.header("content-length"), fourth.body) == (200, "7", b"")
    fifth = json.loads((await client.read_response()).body)
    assert fifth["target"] == "/echo/five"
    assert bytes(client.received) == b"".join(m.raw for m in client.messages)


async def test_head_has_no_body_and_the_connection_stays_usable(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)

    for n in (1000, 3):  # twice: the server leg must also survive a HEAD
        await client.send(request("HEAD", f"/bytes?n={n}"))
        head = await client.read_response(method="HEAD")
        assert head.status == 200
        assert head.header("content-length") == str(n)
        assert head.body == b""
        await client.send(request("GET", "/bytes?n=3"))
        after = await client.read_response()
        assert (after.status, after.body) == (200, PATTERN[:3])
    # Not one byte beyond the four messages: no HEAD body leaked into the stream.
    assert bytes(client.received) == b"".join(m.raw for m in client.messages)


async def test_head_with_content_length_keeps_the_server_connection(harness: Harness) -> None:
    def respond(req: Message) -> bytes:
        if req.method == "HEAD":
            return response(200, headers=[("Content-Length", "1234")], content_length=False)
        return response(200, b"body of " + req.target.encode())

    backend = await harness.raw_backend(serve(respond))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    for i in range(3):
        await client.send(request("HEAD", f"/h{i}"))
        head = await client.read_response(method="HEAD")
        assert (head.status, head.header("content-length"), head.body) == (200, "1234", b"")
        await client.send(request("GET", f"/g{i}"))
        get = await client.read_response()
        assert get.body == f"body of /g{i}".encode()
    assert backend.accepted <= 2
    assert [r.target for r in backend.requests] == ["/h0", "/g0", "/h1", "/g1", "/h2", "/g2"]


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_status_then_next_request_on_the_same_connection(
    harness: Harness, code: int
) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)

    for _ in range(2):
        await client.send(request("GET", f"/status?code={code}"))
        resp = await client.read_response()
        assert resp.status == code
        assert resp.body == b""
        assert resp.header("transfer-encoding") is None
        await client.send(request("GET", "/echo/next"))
        nxt = await client.read_response()
        assert nxt.status == 200
        assert json.loads(nxt.body)["target"] == "/echo/next"
    assert bytes(client.received) == b"".join(m.raw for m in client.messages)


async def test_304_keeps_its_content_length_and_sends_no_body(harness: Harness) -> None:
    def respond(req: Message) -> bytes:
        if req.target == "/cached":
            return response(
                304,
                headers=[("ETag", '"v1"'), ("Content-Length", "5000")],
                reason="Not Modified",
                content_length=False,
            )
        return response(200, b"fresh")

    backend = await harness.raw_backend(serve(respond))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/cached", headers=[("Host", "h"), ("If-None-Match", '"v1"')]))
    cached = await client.read_response()
    assert cached.status == 304
    assert cached.header("content-length") == "5000"
    assert cached.header("etag") == '"v1"'
    await client.send(request("GET", "/other"))
    assert (await client.read_response()).body == b"fresh"
    assert backend.accepted == 1


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"],
    ids=["http10-server", "connection-close"],
)
async def test_close_delimited_response_is_rechunked_for_an_http11_client(
    harness: Harness, status_line: bytes
) -> None:
    body = b"delimited by close " * 3000

    async def until_close(wire: Wire) -> None:
        req = await wire.read_message()
        if req is not None:
            await wire.send(status_line + b"Content-Type: text/plain\r\n\r\n" + body)
        # returning closes the connection: that is the end of the body

    backend = await harness.raw_backend(until_close)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    for i in range(2):
        await client.send(request("GET", f"/stream{i}"))
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.chunked and resp.body == body
    assert backend.accepted == 2  # a close-delimited connection is never reused


async def test_close_delimited_response_to_http10_client_closes_after_it(
    harness: Harness,
) -> None:
    body = b"old style " * 100

    async def until_close(wire: Wire) -> None:
        if await wire.read_message() is not None:
            await wire.send(b"HTTP/1.0 200 OK\r\n\r\n" + body)

    backend = await harness.raw_backend(until_close)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(b"GET / HTTP/1.0\r\nHost: ehr.test\r\nConnection: keep-alive\r\n\r\n")
    resp = await client.read_response()  # no length: read until lbd closes
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert resp.body == body


async def test_round_robin_alternates_between_two_servers(harness: Harness) -> None:
    m1 = await harness.mock_backend("m1")
    m2 = await harness.mock_backend("m2")
    lbd = await harness.lbd([m1.port, m2.port])
    session = harness.session()

    seen = []
    for _ in range(8):
        async with session.get(f"http://127.0.0.1:{lbd.port}/accueil/") as resp:
            assert resp.status == 200
            seen.append(resp.headers["X-Server"])

    assert sorted(set(seen)) == ["m1", "m2"]
    assert seen == [seen[0], seen[1]] * 4, seen
    assert m1.state.counters.requests_total == m2.state.counters.requests_total == 4


async def test_chunked_response_to_http10_client_is_dechunked_and_closed(
    harness: Harness,
) -> None:
    pieces = [b"one ", b"two ", b"three"]
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(pieces)
    backend = await harness.raw_backend(fixed(answer))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(b"GET /c HTTP/1.0\r\nHost: ehr.test\r\nConnection: keep-alive\r\n\r\n")
    resp = await client.read_response()  # HTTP/1.0 has no chunked: the close delimits it

    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"one two three"


async def test_idle_client_connection_is_closed_after_keep_alive_timeout(
    harness: Harness,
) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], timeouts={"keep_alive": "1s"})
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/once"))
    assert (await client.read_response()).body == b"/once"
    # Silently closed (no 408 for an idle keep-alive connection), within a generous bound.
    assert await client.read_until_eof(timeout=5) == b""


async def test_a_keep_alive_connection_idle_past_the_parser_trim_still_serves(
    harness: Harness,
) -> None:
    # After IDLE_TRIM_AFTER (1 s) an idle connection drops its request parser; the next request
    # builds a fresh one, and the keep-alive timeout still counts from the end of the response.
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], timeouts={"keep_alive": "3s"})
    client = await harness.connect(lbd.port)
    for target in ("/first", "/after-trim", "/again"):
        await client.send(request("GET", target))
        assert (await client.read_response()).body == target.encode()
        await asyncio.sleep(1.5)
    assert backend.accepted == 1
    assert await client.read_until_eof(timeout=10) == b""
