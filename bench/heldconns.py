"""Many keep-alive client connections held open, each sending a small GET every few seconds.

Rules: one raw asyncio Protocol per connection (no streams: 25,000 of them must stay cheap on the
load side); every request has a timeout and every outcome is counted — answered (a 200 with its
whole body), a non-200, a timeout, or the connection closed under it; connections spread over
several loopback source addresses so 25,000 of them never run out of ephemeral ports. Run in a
child process (`hold` is its entry point); the parent reads messages from a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import uvloop

REQUEST = b"GET /200b HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: lbd-bench-capacity\r\n\r\n"
PER_SOURCE = 5000  # connections per loopback source address (ephemeral ports are per address)
OPEN_CONCURRENCY = 400
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Tally:
    opened: int = 0
    open_failed: int = 0
    sent: int = 0
    answered: int = 0
    closed_while_idle: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


class Held(asyncio.Protocol):
    """One client connection; `ask` sends REQUEST and waits for the whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(int(head[0].split()[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed by the proxy"))

    async def ask(self, request: bytes = REQUEST) -> int:
        assert self.transport is not None
        if self.lost:
            raise ConnectionResetError("closed by the proxy while idle")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, REQUEST_TIMEOUT_S)


async def _open(port: int, source: str, gate: asyncio.Semaphore, tally: Tally) -> Held | None:
    """Connect and send the first GET at once, as a browser does: a connection that stays
    silent is closed by the proxy's request timeout (HAProxy's `timeout http-request` too)."""
    async with gate:
        try:
            _, held = await asyncio.get_running_loop().create_connection(
                Held, "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            tally.open_failed += 1
            return None
        tally.opened += 1
        await _ask_once(held, tally)
        return held


async def _ask_once(held: Held, tally: Tally) -> None:
    tally.sent += 1
    try:
        status = await held.ask()
    except TimeoutError:
        tally.fail("timeout")
    except ConnectionError:
        tally.fail("closed")
    else:
        if status == 200:
            tally.answered += 1
        else:
            tally.fail(str(status))


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake as soon as `stop` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def _keep_asking(held: Held, interval: float, stop: asyncio.Event, tally: Tally) -> None:
    """A GET every `interval` seconds after the first, at a random offset (load spread)."""
    await _pause(stop, random.uniform(0, interval))
    while not stop.is_set():
        if held.lost:
            # Not a failed request (none was pending), but a held connection lost: counted apart.
            tally.closed_while_idle += 1
            return
        started = time.monotonic()
        await _ask_once(held, tally)
        if held.lost:
            return  # counted by _ask_once when a request was pending
        await _pause(stop, interval - (time.monotonic() - started))


async def _run(
    port: int, count: int, first_source: int, interval: float, queue: Any, stop_flag: Any
) -> None:
    tally = Tally()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    sources = [f"127.0.0.{first_source + i // PER_SOURCE}" for i in range(count)]
    helds = [h for h in await asyncio.gather(*(_open(port, s, gate, tally) for s in sources)) if h]
    queue.put(("opened", tally.opened, tally.open_failed))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_keep_asking(h, interval, stop, tally)) for h in helds]
    while not stop_flag.is_set():  # a multiprocessing.Event: polled, it cannot be awaited
        await asyncio.sleep(0.2)
    stop.set()
    # In-flight requests finish (each is bounded by REQUEST_TIMEOUT_S); sleeping ones wake later.
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 1)
    for task in pending:
        task.cancel()
    for held in helds:
        if held.transport is not None:
            held.transport.close()
    with contextlib.suppress(Exception):
        await asyncio.gather(*pending, return_exceptions=True)
    queue.put(("done", asdict(tally)))


def hold(port: int, count: int, first_source: int, interval: float, queue: Any, stop: Any) -> None:
    """Child-process entry point: open `count` connections, ask until `stop` is set, report."""
    uvloop.run(_run(port, count, first_source, interval, queue, stop))
