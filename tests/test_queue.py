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


async def test_a_session_waiting_for_its_full_server_does_not_hold_back_the_queue(
    harness: Harness,
) -> None:
    # Both servers at maxconn 1. A persistent request for s1 waits first, a plain one behind
    # it. When s2 frees its slot, the plain request takes it at once; the persistent one keeps
    # its place for s1 (it once re-queued itself at the back and swallowed the wake-up).
    m1, m2 = await harness.mock_backend("app1"), await harness.mock_backend("app2")
    servers = [
        {"name": "s1", "address": f"127.0.0.1:{m1.port}", "maxconn": 1, "cookie": "c1"},
        {"name": "s2", "address": f"127.0.0.1:{m2.port}", "maxconn": 1, "cookie": "c2"},
    ]
    lbd = await harness.lbd(
        [m1.port, m2.port],
        backend={"servers": servers, "sticky": {"cookie": {"name": "SERVERID"}}},
        timeouts={"queue": "10s", "server": "10s"},
    )
    session = harness.session()
    base = f"http://127.0.0.1:{lbd.port}"

    async def get(path: str, server_cookie: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": f"SERVERID={server_cookie}"} if server_cookie else {}
        async with session.get(base + path, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("X-Server", "")

    hold_s1 = asyncio.create_task(get("/slow?ms=3000", "c1"))
    hold_s2 = asyncio.create_task(get("/slow?ms=700", "c2"))
    await asyncio.sleep(0.2)
    sticky = asyncio.create_task(get("/accueil/sticky", "c1"))  # waits for s1
    await asyncio.sleep(0.2)
    plain = asyncio.create_task(get("/accueil/plain"))  # waits behind it
    assert await asyncio.wait_for(plain, 10) == (200, "app2")
    assert not hold_s1.done()  # served by s2's freed slot, not after s1's 3 s answer
    assert not sticky.done()
    assert await asyncio.wait_for(sticky, 10) == (200, "app1")  # its session kept
    assert (await hold_s1)[0] == 200 and (await hold_s2)[0] == 200
