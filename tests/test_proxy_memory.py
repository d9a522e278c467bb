"""A closed connection is freed at once, by reference counting: no reference cycle keeps it
(and everything it holds) waiting for Python's cyclic garbage collector, which would cost CPU
on every collection and memory in between.

Rules: a real Worker runs in this process (so its objects can be counted) in front of a real
backend on 127.0.0.1 that answers `Connection: close`; real clients send `Connection: close`
requests over raw sockets. The cyclic GC is off while they run: whatever is still alive
afterwards could only have been freed by it.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from e2e_helpers import free_port, wait_until

from lbd.config.load import load_config_text
from lbd.process.worker import Worker
from lbd.proxy.client import ClientConnection
from lbd.proxy.upstream import UpstreamConnection

pytestmark = pytest.mark.timeout(60)

CONNECTIONS = 30


async def _closing_backend() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _one_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)  # lbd closes after the response
    writer.close()
    return answer


def _alive() -> int:
    return sum(1 for o in gc.get_objects() if type(o) in (ClientConnection, UpstreamConnection))


async def _worker(tmp_path: Path) -> tuple[asyncio.Server, Worker, int]:
    """A started in-process Worker in front of a closing backend; (backend, worker, port)."""
    backend, backend_port = await _closing_backend()
    port = free_port()
    text = f"""\
global: {{log: {{access: "off"}}}}
frontends:
  web: {{bind: ["127.0.0.1:{port}"], default_backend: app}}
backends:
  app:
    servers: [{{name: s1, address: "127.0.0.1:{backend_port}"}}]
"""
    worker = Worker(load_config_text(text, str(tmp_path / "lbd.yaml")))
    await worker.start()
    return backend, worker, port


async def test_closed_connections_need_no_cyclic_gc(tmp_path: Path) -> None:
    backend, worker, port = await _worker(tmp_path)
    try:
        gc.collect()
        before = _alive()
        gc.disable()
        try:
            for _ in range(CONNECTIONS):
                answer = await _one_request(port)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok")
            await wait_until(lambda: not worker.connections, what="client connections closed")
            await asyncio.sleep(0.2)  # the server legs' connection_lost callbacks
            left = _alive() - before
        finally:
            gc.enable()
        # Without the cycles broken, all 30 client and 30 server legs would still be here.
        assert left == 0, f"{left} connection objects wait for the cyclic GC"
    finally:
        await worker.graceful_stop()
        backend.close()


async def test_worker_lists_open_connections_and_forgets_closed_ones(tmp_path: Path) -> None:
    # The worker's registry (an intrusive list, not a set) is what a graceful stop walks.
    backend, worker, port = await _worker(tmp_path)
    writers = []
    try:
        for _ in range(4):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
        await wait_until(lambda: len(worker.connections) == 4, what="4 connections listed")
        assert len(set(map(id, worker.connections))) == 4
        for index in (1, 3, 0):  # middle, last, first
            writers[index].close()
            left = 3 - [1, 3, 0].index(index)
            await wait_until(lambda n=left: len(worker.connections) == n, what=f"{left} left")
        assert len(list(worker.connections)) == 1
    finally:
        await worker.graceful_stop()  # closes the idle one that is left
        backend.close()
    assert len(worker.connections) == 0
