"""The relay: a byte pipe on uvloop, for the bench's `relay` row. No HTTP at all: each client
connection gets its own server connection and every read on one side is written to the other.

It is the ceiling of any proxy built on uvloop's Python-facing transports: whatever an HTTP
proxy does (parse, route, count, log) comes on top of these two callbacks and two writes per
request. When even this row is short of HAProxy, the difference is uvloop and the interpreter,
not the proxy written on them. Bench tooling only.

    python bench/peers/relay_proxy.py --port 8081 --upstream 127.0.0.1:9001
"""

from __future__ import annotations

import asyncio

import peer_cli  # bench/peers/, next to this script


class Side(asyncio.Protocol):
    """One leg; `peer` is the other leg. Writes to a leg that is not connected yet wait."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's, not a subclass
        for data in self.waiting:
            self.transport.write(data)  # type: ignore[union-attr]
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        if peer.transport is None:
            peer.waiting.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Backpressure: a leg that cannot keep up stops the other from reading.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def client_side(upstream: tuple[str, int], tasks: set[asyncio.Task[object]]) -> Side:
    client, server = Side(), Side()
    client.peer, server.peer = server, client
    loop = asyncio.get_running_loop()
    task = loop.create_task(loop.create_connection(lambda: server, *upstream))
    tasks.add(task)  # keep a reference until it is done

    def connected(task: asyncio.Task[object]) -> None:
        tasks.discard(task)
        if (task.cancelled() or task.exception() is not None) and client.transport is not None:
            client.transport.close()  # no server: the client sees its connection closed

    task.add_done_callback(connected)
    return client


async def serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()
    server = await loop.create_server(
        lambda: client_side(upstream, tasks), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    peer_cli.run(serve, __doc__.splitlines()[0])
