"""Proxy core, end to end: what the client gets when the server leg fails, and timeouts.

Errors map to a status by their source: connect failure → retries, then 503; a server that
closes without answering → 502 (a non-idempotent request is never resent once it reached a
server); a server that stops mid-response → the client connection is closed, never a second
status line; server silence → 504 after `timeouts.server`; a client that never finishes its head
→ 408 after `timeouts.http_request`.

Timeouts here are 1 s and are only bounded from above, generously (they fire within 5 s).
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from e2e_helpers import (
    Handler,
    Harness,
    Wire,
    echo_target,
    free_port,
    request,
    response,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


async def test_refused_server_gives_503_after_retries(harness: Harness) -> None:
    lbd = await harness.lbd([free_port()], backend={"retries": 2})  # nothing listens there
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/"))
    resp = await client.read_response()

    assert resp.status == 503
    assert resp.header("connection") == "close"
    assert await client.at_eof()


async def test_refused_server_is_retried_on_the_other_one(harness: Harness) -> None:
    alive = await harness.mock_backend("alive")
    lbd = await harness.lbd([free_port(), alive.port])  # s1 refuses, s2 works
    client = await harness.connect(lbd.port)

    for i in range(6):
        await client.send(request("GET", f"/echo/{i}"))
        resp = await client.read_response()
        assert resp.status == 200, resp.raw
        assert resp.header("x-server") == "alive"
    assert alive.state.counters.requests_total == 6


async def closes_without_answer(wire: Wire) -> None:
    await wire.read_message()  # the whole request, then close


async def test_post_to_a_server_closing_without_answer_gives_502_and_is_not_resent(
    harness: Harness,
) -> None:
    backend = await harness.raw_backend(closes_without_answer)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("POST", "/submit", body=b"prescription=1"))
    resp = await client.read_response()

    assert resp.status == 502
    assert resp.header("connection") == "close"
    assert [(r.method, r.body) for r in backend.requests] == [("POST", b"prescription=1")]
    assert backend.accepted == 1


async def test_get_to_a_server_closing_without_answer_gives_502(harness: Harness) -> None:
    backend = await harness.raw_backend(closes_without_answer)
    lbd = await harness.lbd([backend.port], backend={"retries": 2})
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/idempotent"))
    resp = await client.read_response()

    assert resp.status == 502
    # An idempotent request may be retried, but a bounded number of times (retries: 2).
    assert 1 <= len(backend.requests) <= 3
    assert {r.target for r in backend.requests} == {"/idempotent"}


class ClosingAtAccept:
    """A server that closes every connection the moment accept() returns it, from a thread of
    its own so the close can reach lbd while lbd is still between accepting the connect and
    using the connection (an overloaded server shedding connections)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.close()
            self.accepted += 1

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


async def test_server_closing_each_connection_at_once_gives_503_not_a_hang(
    harness: Harness,
) -> None:
    # The close can reach lbd before its connect coroutine resumes (uvloop wakes it a few loop
    # turns after connection_made): that connection must count as failed, not be used.
    backend = ClosingAtAccept()
    try:
        lbd = await harness.lbd([backend.port], backend={"retries": 2})
        for i in range(30):
            client = await harness.connect(lbd.port)
            await client.send(request("GET", f"/{i}"))
            resp = await asyncio.wait_for(client.read_response(), 5)
            assert resp.status in (502, 503), resp.raw
            assert resp.header("connection") == "close"
        assert backend.accepted >= 30
    finally:
        backend.stop()


def first_connection_dies_after_one_answer() -> Handler:
    """Connection 1 answers one request, then reads the next and closes without answering
    (a server's keep-alive timeout racing lbd's reuse); later connections answer normally."""
    count = 0

    async def handler(wire: Wire) -> None:
        nonlocal count
        count += 1
        if count > 1:
            await echo_target()(wire)
            return
        req = await wire.read_message()
        if req is not None:
            await wire.send(
                response(200, req.target.encode(), [("X-Body-Len", str(len(req.body)))])
            )
            await wire.read_message()

    return handler


async def test_idempotent_request_is_resent_after_a_reused_connection_closes(
    harness: Harness,
) -> None:
    backend = await harness.raw_backend(first_connection_dies_after_one_answer())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/first"))
    assert (await client.read_response()).body == b"/first"
    await client.send(request("GET", "/second"))
    resp = await client.read_response()

    assert (resp.status, resp.body) == (200, b"/second")
    assert [[m.target for m in w.messages] for w in backend.wires] == [
        ["/first", "/second"],
        ["/second"],
    ]


async def test_post_is_not_resent_after_a_reused_connection_closes(harness: Harness) -> None:
    backend = await harness.raw_backend(first_connection_dies_after_one_answer())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/first"))
    assert (await client.read_response()).body == b"/first"
    await client.send(request("POST", "/order", body=b"dose=2"))
    resp = await client.read_response()

    assert resp.status == 502
    assert [(m.method, m.target) for m in backend.requests] == [
        ("GET", "/first"),
        ("POST", "/order"),
    ]


async def test_pipelined_put_resent_after_a_reused_connection_closes_is_intact(
    harness: Harness,
) -> None:
    backend = await harness.raw_backend(first_connection_dies_after_one_answer())
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    # One write: the PUT and its body are read while /first is still in progress.
    await client.send(request("GET", "/first") + request("PUT", "/second", body=b"payload"))
    assert (await client.read_response()).body == b"/first"
    await wait_until(
        lambda: backend.accepted == 2 and len(backend.wires[1].received) > 20,
        what="the PUT resent on a second connection",
    )

    assert bytes(backend.wires[1].received).startswith(b"PUT /second HTTP/1.1\r\n")
    resp = await client.read_response()
    assert (resp.status, resp.body, resp.header("x-body-len")) == (200, b"/second", "7")
    resent = backend.wires[1].messages
    assert [(m.start_line, m.body) for m in resent] == [("PUT /second HTTP/1.1", b"payload")]


async def test_server_closing_mid_response_closes_the_client_connection(
    harness: Harness,
) -> None:
    async def truncates(wire: Wire) -> None:
        if await wire.read_message() is not None:
            await wire.send(
                response(200, headers=[("Content-Length", "1000")], content_length=False)
                + b"x" * 10
            )

    backend = await harness.raw_backend(truncates)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/truncated"))
    head = await client.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Length: 1000\r\n" in head
    rest = await client.read_until_eof()  # lbd closes: the client knows the body is truncated

    assert (b"x" * 10).startswith(rest), f"not a prefix of the body: {rest!r}"
    assert b"HTTP/1.1" not in rest
    assert backend.accepted == 1  # a response already started is never retried


async def test_silent_server_gives_504_after_the_server_timeout(harness: Harness) -> None:
    server_leg_closed = asyncio.Event()

    async def silent(wire: Wire) -> None:
        await wire.read_message()
        if await wire.read(1, timeout=20) == b"":  # wait, answering nothing, until lbd closes
            server_leg_closed.set()

    backend = await harness.raw_backend(silent)
    lbd = await harness.lbd([backend.port], timeouts={"server": "1s"})
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/never"))
    resp = await client.read_response(timeout=5)  # 1 s timeout, generous bound

    assert resp.status == 504
    assert resp.header("connection") == "close"
    assert await client.at_eof()
    await asyncio.wait_for(server_leg_closed.wait(), 5)
    assert backend.accepted == 1  # a timeout is not retried


async def test_slowloris_head_gets_408_after_http_request_timeout(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], timeouts={"http_request": "1s"})
    client = await harness.connect(lbd.port)

    await client.send(b"GET /slow HTTP/1.1\r\nHost: ehr.test\r\nX-Partial: ")
    resp = await client.read_response(timeout=5)

    assert resp.status == 408
    assert resp.header("connection") == "close"
    assert await client.at_eof()
    assert backend.accepted == 0


async def test_trickled_head_still_gets_408(harness: Harness) -> None:
    """http_request bounds the whole head, not the silence between bytes."""
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], timeouts={"http_request": "1s"})
    client = await harness.connect(lbd.port)
    await client.send(b"GET /trickle HTTP/1.1\r\nHost: ehr.test\r\n")

    async def trickle() -> None:
        for i in range(40):  # up to 8 s of one header line every 200 ms
            await asyncio.sleep(0.2)
            await client.send(b"X-%d: y\r\n" % i)

    task = asyncio.create_task(trickle())
    try:
        resp = await client.read_response(timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert resp.status == 408
    assert backend.accepted == 0


async def test_connection_that_sends_nothing_is_closed_silently(harness: Harness) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await harness.lbd([backend.port], timeouts={"http_request": "1s"})
    client = await harness.connect(lbd.port)

    assert await client.read_until_eof(timeout=5) == b""  # no 408 for a connection never used


@pytest.mark.skip(
    reason="connect timeout needs an address that never answers SYN; on 127.0.0.1 a closed "
    "port refuses at once (covered by the 503 tests) and non-loopback addresses are off limits"
)
async def test_connect_timeout() -> None:
    raise AssertionError("unreachable")


async def test_client_stalling_mid_body_gets_408_after_the_client_timeout(
    harness: Harness,
) -> None:
    server_leg_closed = asyncio.Event()

    async def reads_until_closed(wire: Wire) -> None:
        for _ in range(100):
            if not await wire.read(65536, timeout=20):
                server_leg_closed.set()
                return

    backend = await harness.raw_backend(reads_until_closed)
    lbd = await harness.lbd([backend.port], timeouts={"client": "1s"})
    client = await harness.connect(lbd.port)

    head = request("POST", "/upload", headers=[("Host", "ehr.test"), ("Content-Length", "1000")])
    await client.send(head + b"only ten b")
    resp = await client.read_response(timeout=5)

    assert resp.status == 408
    assert resp.header("connection") == "close"
    assert await client.at_eof()
    await asyncio.wait_for(server_leg_closed.wait(), 5)  # the half-sent request was dropped


async def test_client_leaving_mid_body_closes_the_server_connection(harness: Harness) -> None:
    server_leg_closed = asyncio.Event()

    async def reads_until_closed(wire: Wire) -> None:
        for _ in range(100):
            if not await wire.read(65536, timeout=20):
                server_leg_closed.set()
                return

    backend = await harness.raw_backend(reads_until_closed)
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    head = request("POST", "/upload", headers=[("Host", "ehr.test"), ("Content-Length", "1000")])
    await client.send(head + b"only ten b")
    await wait_until(lambda: backend.accepted == 1 and b"only ten b" in backend.received())
    client.close()

    await asyncio.wait_for(server_leg_closed.wait(), 5)
    assert bytes(backend.wires[0].received).endswith(b"only ten b")


async def test_server_stalling_mid_response_closes_the_client_connection(
    harness: Harness,
) -> None:
    async def stalls(wire: Wire) -> None:
        if await wire.read_message() is not None:
            head = response(200, headers=[("Content-Length", "1000")], content_length=False)
            await wire.send(head + b"y" * 10)
            await wire.read(1, timeout=20)  # then silence until lbd gives up

    backend = await harness.raw_backend(stalls)
    lbd = await harness.lbd([backend.port], timeouts={"server": "1s"})
    client = await harness.connect(lbd.port)

    await client.send(request("GET", "/stalls"))
    head = await client.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    rest = await client.read_until_eof(timeout=5)  # closed after ~1 s: no 504 after a 200

    assert (b"y" * 10).startswith(rest), f"not a prefix of the body: {rest!r}"
    assert b"HTTP/1.1" not in rest
