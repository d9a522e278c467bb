"""Proxy core, end to end: requests lbd refuses before any byte reaches a server.

Each refusal is answered with its status and `Connection: close`, then the connection closes.
"Nothing reached the server" is checked against a barrier: after the bad request, a good one
on a new connection must be the only request the backend ever saw.
"""

from __future__ import annotations

from typing import Any

import pytest
from e2e_helpers import Harness, RawBackend, echo_target, request

pytestmark = pytest.mark.timeout(30)


async def refused(harness: Harness, data: bytes, status: int, **lbd_options: Any) -> None:
    """Send `data` on a new connection: expect `status`, a close, and nothing at the server."""
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], **lbd_options)
    client = await harness.connect(lbd.port)

    await client.send(data)
    resp = await client.read_response()
    assert resp.status == status, resp.raw
    assert resp.header("connection") == "close"
    assert await client.at_eof()
    await assert_only_barrier_reached(harness, lbd.port, backend)


async def assert_only_barrier_reached(harness: Harness, port: int, backend: RawBackend) -> None:
    barrier = await harness.connect(port)
    await barrier.send(request("GET", "/barrier"))
    assert (await barrier.read_response()).body == b"/barrier"
    assert [r.target for r in backend.requests] == ["/barrier"]
    assert backend.received().count(b"HTTP/1.1\r\n") == 1, backend.received()


async def test_http11_without_host_gets_400(harness: Harness) -> None:
    await refused(harness, b"GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)


async def test_two_hosts_get_400(harness: Harness) -> None:
    data = b"GET /twohosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"
    await refused(harness, data, 400)


async def test_content_length_with_transfer_encoding_gets_400(harness: Harness) -> None:
    # The classic smuggling shape: the "body" hides a second request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
    data = (
        b"POST /cl-te HTTP/1.1\r\nHost: ehr.test\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled))
    ) + smuggled
    await refused(harness, data, 400)


async def test_oversized_uri_gets_414(harness: Harness) -> None:
    await refused(harness, request("GET", "/" + "a" * 9000), 414)  # default limit 8 KiB


async def test_too_many_headers_get_431(harness: Harness) -> None:
    headers = [("Host", "ehr.test")] + [(f"X-H{i}", "v") for i in range(101)]  # limit 100
    await refused(harness, request("GET", "/many", headers=headers), 431)


async def test_oversized_header_section_gets_431(harness: Harness) -> None:
    headers = [("Host", "ehr.test"), ("Cookie", "c=" + "x" * 40_000)]  # limit 32 KiB
    await refused(harness, request("GET", "/big-head", headers=headers), 431)


async def test_declared_body_over_the_limit_gets_413(harness: Harness) -> None:
    data = request("POST", "/upload", body=b"z" * 2000)
    await refused(harness, data, 413, limits={"max_body_bytes": "1KiB"})


async def test_chunked_body_over_the_limit_gets_413(harness: Harness) -> None:
    """Without a Content-Length the limit can only trip while the body streams: the server may
    have seen the start of it, but the client gets 413 and its connection closes."""
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], limits={"max_body_bytes": "1KiB"})
    client = await harness.connect(lbd.port)

    head = request(
        "POST", "/chunks", headers=[("Host", "ehr.test"), ("Transfer-Encoding", "chunked")]
    )
    await client.send(head + b"400\r\n" + b"a" * 1024 + b"\r\n" + b"10\r\n" + b"b" * 16 + b"\r\n")
    resp = await client.read_response()

    assert resp.status == 413
    assert resp.header("connection") == "close"
    assert await client.at_eof()
    assert b"b" * 16 not in backend.received()  # nothing past the limit was forwarded


async def test_bad_request_pipelined_behind_a_good_one_is_answered_in_turn(
    harness: Harness,
) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    bad = b"GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n"
    await client.send(request("GET", "/good") + bad + request("GET", "/never"))
    first = await client.read_response()
    second = await client.read_response()

    assert (first.status, first.body) == (200, b"/good")
    assert second.status == 400
    assert second.header("connection") == "close"
    assert await client.at_eof()  # nothing after the error is parsed, let alone answered
    assert [r.target for r in backend.requests] == ["/good"]
