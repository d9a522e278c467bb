"""Per-server maxconn with HAProxy's backend queue: FIFO, bounded in time, never lost."""

from __future__ import annotations

import asyncio
import time

from e2e_helpers import Harness


async def test_maxconn_1_serves_10_concurrent_slow_requests_in_fifo_order(
    harness: Harness,
) -> None:
    mock = await harness.mock_backend("app1")
    lbd = await harness.lbd(
        [mock.port],
        backend={"servers": [{"name": "s1", "address": f"127.0.0.1:{mock.port}", "maxconn": 1}]},
        timeouts={"queue": "10s", "server": "10s"},
    )
    session = harness.session()
    finished: list[int] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.02)  # staggered arrivals fix the expected order
        async with session.get(f"http://127.0.0.1:{lbd.port}/slow?ms=100&i={i}") as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
        finished.append(i)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 30)
    assert finished == list(range(10))  # oldest waiting request first
    # One at a time: ten 100 ms answers cannot overlap (a loose bound, not a timing test).
    assert time.monotonic() - started >= 0.9


async def test_queue_timeout_gives_503_and_the_queue_empties(harness: Harness) -> None:
    mock = await harness.mock_backend("app1")
    lbd = await harness.lbd(
        [mock.port],
        backend={"servers": [{"name": "s1", "address": f"127.0.0.1:{mock.port}", "maxconn": 1}]},
        timeouts={"queue": "300ms", "server": "10s"},
    )
    session = harness.session()

    async def get(path: str) -> int:
        async with session.get(f"http://127.0.0.1:{lbd.port}{path}") as resp:
            await resp.read()
            return resp.status

    slow = asyncio.create_task(get("/slow?ms=1500"))
    await asyncio.sleep(0.2)
    waiting = await asyncio.wait_for(asyncio.gather(get("/accueil/a"), get("/accueil/b")), 10)
    assert waiting == [503, 503]
    assert await asyncio.wait_for(slow, 10) == 200
    assert await get("/accueil/c") == 200  # the slot and the queue are free again
    async with session.get(f"http://127.0.0.1:{lbd.port}/accueil/d") as resp:
        assert resp.status == 200


async def test_maxqueue_bounds_the_queue_with_an_immediate_503(harness: Harness) -> None:
    mock = await harness.mock_backend("app1")
    server = {"name": "s1", "address": f"127.0.0.1:{mock.port}", "maxconn": 1, "maxqueue": 1}
    lbd = await harness.lbd(
        [mock.port], backend={"servers": [server]}, timeouts={"queue": "10s", "server": "10s"}
    )
    session = harness.session()

    async def get(path: str) -> int:
        async with session.get(f"http://127.0.0.1:{lbd.port}{path}") as resp:
            await resp.read()
            return resp.status

    busy = asyncio.create_task(get("/slow?ms=1000"))  # takes the only slot
    await asyncio.sleep(0.2)
    queued = asyncio.create_task(get("/accueil/queued"))  # the one queue place
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await get("/accueil/overflow") == 503  # queue full: refused at once
    assert time.monotonic() - started < 5  # not after timeouts.queue (10 s)
    assert await asyncio.wait_for(asyncio.gather(busy, queued), 15) == [200, 200]
