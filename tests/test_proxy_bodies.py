"""Proxy core, end to end: request and response bodies.

Chunked bodies both ways, 1 MiB both ways, a slow reader (with lbd's memory bounded while a
64 MiB response streams through it) and `Expect: 100-continue`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random

import pytest
from e2e_helpers import Harness, Wire, chunked, request, response, serve

from lbd.mock.app import PATTERN

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


CHUNK_PIECES = [b"a", b"b" * 1000, payload(70_000), b"tail"]
CHUNKED_HEADERS = [("Host", "ehr.test"), ("Transfer-Encoding", "chunked")]


async def test_chunked_request_body_reaches_the_echo_intact(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)
    data = b"".join(CHUNK_PIECES)

    for _ in range(2):  # and the connection is in sync afterwards
        await client.send(request("POST", "/echo", headers=CHUNKED_HEADERS) + chunked(CHUNK_PIECES))
        resp = await client.read_response()
        assert resp.status == 200
        echo = json.loads(resp.body)
        assert echo["body_length"] == len(data)
        assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_chunked_request_is_forwarded_as_valid_chunked(harness: Harness) -> None:
    backend = await harness.raw_backend(
        serve(lambda req: response(200, str(len(req.body)).encode()))
    )
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    data = b"".join(CHUNK_PIECES)
    # A chunk extension and a trailer section: legal, and neither may confuse the framing.
    body = b"5;ext=1\r\nhello\r\n" + chunked(CHUNK_PIECES, trailers=b"X-Checksum: abc\r\n")

    await client.send(request("POST", "/up", headers=CHUNKED_HEADERS) + body)
    resp = await client.read_response()

    assert resp.body == str(len(data) + 5).encode()
    sent = backend.requests[0]
    assert sent.chunked
    assert sent.header("transfer-encoding") == "chunked"
    assert sent.header("content-length") is None
    assert sent.body == b"hello" + data
    assert sent.raw.endswith(b"0\r\n\r\n")  # the message ends exactly where it should


async def test_chunked_response_is_relayed(harness: Harness) -> None:
    pieces = [b"first ", payload(100_000, 1), b"", b"last"]
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n"
        + b"3;name=value\r\nabc\r\n"
        + chunked(pieces, trailers=b"X-Trailer: t\r\n")
    )
    backend = await harness.raw_backend(serve(lambda _req: answer))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    for _ in range(3):
        await client.send(request("GET", "/chunked"))
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.header("x-kind") == "chunked"
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.body == b"abc" + b"".join(pieces)
    assert backend.accepted == 1


async def test_one_mib_post_reaches_the_echo_intact(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    session = harness.session()
    data = payload(MiB)

    for _ in range(2):
        async with session.post(f"http://127.0.0.1:{lbd.port}/echo", data=data) as resp:
            assert resp.status == 200
            echo = await resp.json()
        assert echo["method"] == "POST"
        assert echo["body_length"] == MiB
        assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_one_mib_response_to_a_slow_reader(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", f"/bytes?n={MiB}"))
    head = await client.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Length: 1048576\r\n" in head
    for i in range(MiB // len(PATTERN)):  # 64 KiB every 20 ms
        assert await client.readexactly(len(PATTERN)) == PATTERN, f"block {i} differs"
        await asyncio.sleep(0.02)
    # The connection is in sync: the next response starts right there.
    await client.send(request("GET", "/bytes?n=3"))
    assert (await client.read_response()).body == PATTERN[:3]


async def test_streaming_64_mib_to_a_slow_reader_keeps_lbd_memory_bounded(
    harness: Harness,
) -> None:
    size = 64 * MiB
    block = PATTERN * 4  # 256 KiB

    async def streamer(wire: Wire) -> None:
        for _ in range(2):
            req = await wire.read_message()
            if req is None:
                return
            if req.target == "/warm":
                await wire.send(response(200, b"warm"))
                continue
            wire.writer.write(
                response(200, headers=[("Content-Length", str(size))], content_length=False)
            )
            for _ in range(size // len(block)):
                wire.writer.write(block)
                await asyncio.wait_for(wire.writer.drain(), 20)

    backend = await harness.raw_backend(streamer)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/warm"))
    assert (await client.read_response()).body == b"warm"
    baseline = lbd.rss_kib()

    await client.send(request("GET", "/big"))
    head = await client.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    peak = baseline
    reader = client.reader  # not client.read*: those would keep all 64 MiB in the test
    for i in range(size // len(block)):
        data = await asyncio.wait_for(reader.readexactly(len(block)), 10)
        assert data == block, f"block {i} differs"
        if i % 2 == 0:
            peak = max(peak, lbd.rss_kib())
            await asyncio.sleep(0.005)  # slower than the server: lbd must apply backpressure
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 30, f"lbd RSS grew by {growth_mib:.1f} MiB streaming 64 MiB"


async def test_expect_100_continue(harness: Harness) -> None:
    mock = await harness.mock_backend("m1")
    lbd = await harness.lbd([mock.port])
    client = await harness.connect(lbd.port)
    data = payload(5000)

    head = request(
        "POST",
        "/echo/expect",
        headers=[
            ("Host", "ehr.test"),
            ("Expect", "100-continue"),
            ("Content-Length", str(len(data))),
        ],
    )
    await client.send(head)
    interim = await client.read_response()  # the body is not sent before this arrives
    assert interim.status == 100
    assert interim.start_line.startswith("HTTP/1.1 100")
    await client.send(data)
    final = await client.read_response()
    assert final.status == 200
    echo = json.loads(final.body)
    assert echo["target"] == "/echo/expect"
    assert echo["body_length"] == len(data)
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()
    # And the connection goes on.
    await client.send(request("GET", "/echo/after"))
    assert json.loads((await client.read_response()).body)["target"] == "/echo/after"
