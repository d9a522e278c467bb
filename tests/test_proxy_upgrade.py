"""Proxy core, end to end: `Upgrade` (WebSocket) tunnels.

After the server's 101 lbd relays raw bytes both ways; a close on either side closes the other.
A server that refuses the upgrade (any final status but 101) leaves an ordinary HTTP exchange.
"""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import Handler, Harness, Wire, request, response

pytestmark = pytest.mark.timeout(30)

UPGRADE_HEADERS = [
    ("Host", "ehr.test"),
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
MESSAGES = [b"hello", bytes(range(256)), b"\x00" * 100_000]


def echo_tunnel(closed: asyncio.Event, replies: int = 1000) -> Handler:
    """Answer 101 to an upgrade request, then echo every byte; set `closed` when lbd closes the
    tunnel's server leg. A plain request gets a plain 200 `plain` (keep-alive)."""

    async def handler(wire: Wire) -> None:
        for _ in range(100):
            req = await wire.read_message()
            if req is None:
                return
            if req.header("upgrade") is not None:
                break
            await wire.send(response(200, b"plain"))
        else:
            return
        await wire.send(SWITCHING)
        for _ in range(replies):
            data = await wire.read(65536, timeout=10)
            if not data:
                closed.set()
                return
            await wire.send(data)

    return handler


async def open_tunnel(harness: Harness, port: int, early: bytes = b"") -> Wire:
    client = await harness.connect(port)
    await client.send(request("GET", "/ws", headers=UPGRADE_HEADERS) + early)
    resp = await client.read_response()
    assert resp.status == 101, resp.raw
    assert (resp.header("upgrade") or "").lower() == "websocket"
    assert "upgrade" in (resp.header("connection") or "").lower()
    assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    return client


async def test_websocket_tunnel_relays_bytes_both_ways(harness: Harness) -> None:
    closed = asyncio.Event()
    backend = await harness.raw_backend(echo_tunnel(closed))
    lbd = await harness.lbd([backend.port])
    client = await open_tunnel(harness, lbd.port)

    for msg in MESSAGES:
        await client.send(msg)
        assert await client.readexactly(len(msg), timeout=2) == msg

    sent = backend.requests[0]
    assert sent.start_line == "GET /ws HTTP/1.1"
    assert (sent.header("upgrade") or "").lower() == "websocket"
    assert "upgrade" in (sent.header("connection") or "").lower()
    assert sent.header("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="

    client.close()  # the client's close reaches the server
    await asyncio.wait_for(closed.wait(), 5)


async def test_bytes_sent_with_the_upgrade_request_reach_the_server(harness: Harness) -> None:
    closed = asyncio.Event()
    backend = await harness.raw_backend(echo_tunnel(closed))
    lbd = await harness.lbd([backend.port])
    # Sent in the same write as the request, before the 101 came back.
    client = await open_tunnel(harness, lbd.port, early=b"early bird")

    assert await client.readexactly(len(b"early bird"), timeout=2) == b"early bird"
    await client.send(b"later")
    assert await client.readexactly(5) == b"later"


async def test_server_close_closes_the_client_side_of_the_tunnel(harness: Harness) -> None:
    closed = asyncio.Event()
    backend = await harness.raw_backend(echo_tunnel(closed, replies=1))
    lbd = await harness.lbd([backend.port])
    client = await open_tunnel(harness, lbd.port)

    await client.send(b"ping")
    assert await client.readexactly(4, timeout=2) == b"ping"
    # The server handler returned (closing its side): the client sees EOF, no extra byte.
    assert await client.at_eof()


async def test_an_upgraded_server_connection_is_never_reused(harness: Harness) -> None:
    closed = asyncio.Event()
    backend = await harness.raw_backend(echo_tunnel(closed))
    lbd = await harness.lbd([backend.port])
    await open_tunnel(harness, lbd.port)

    other = await harness.connect(lbd.port)  # another client, plain HTTP
    await other.send(request("GET", "/plain"))
    resp = await other.read_response()
    assert (resp.status, resp.body) == (200, b"plain"), resp.raw
    assert backend.accepted == 2
    assert [m.target for m in backend.wires[0].messages] == ["/ws"]


async def test_refused_upgrade_leaves_a_working_or_closed_connection(harness: Harness) -> None:
    async def plain(wire: Wire) -> None:
        for _ in range(10):
            if await wire.read_message(timeout=30) is None:
                return
            await wire.send(response(200, b"no upgrade here"))

    backend = await harness.raw_backend(plain)
    lbd = await harness.lbd([backend.port], timeouts={"keep_alive": "30s"})
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/ws", headers=UPGRADE_HEADERS))
    resp = await client.read_response()
    assert (resp.status, resp.body) == (200, b"no upgrade here")

    # After a refused upgrade lbd may close (saying so), or go on with HTTP/1.1; never hang.
    if resp.header("connection") == "close":
        assert await client.at_eof()
    else:
        await client.send(request("GET", "/next"))
        nxt = await client.read_response()
        assert (nxt.status, nxt.body) == (200, b"no upgrade here")
