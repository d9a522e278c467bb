"""Memory per idle keep-alive connection: open N clients, one request each, then leave them idle.

RSS is summed over the proxy's process tree (VmRSS) before and after; the difference divided by N
is what a hospital pays per idle browser tab. Connections open at most CONCURRENCY at a time and
the whole phase is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from dataclasses import dataclass

from lab import Endpoint
from procs import rss_kib

CONCURRENCY = 200
SETTLE_S = 2.0
REQUEST = b"GET /200b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass(frozen=True)
class RssResult:
    proxy: str
    connections: int
    baseline_kib: int
    loaded_kib: int
    per_connection_bytes: float


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft if hard == resource.RLIM_INFINITY else hard


async def _one_client(port: int, gate: asyncio.Semaphore) -> asyncio.StreamWriter:
    """Connect, send one request, read the whole response; return the still-open writer."""
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return writer


async def _hold_idle(port: int, n: int, pid: int, timeout: float) -> int:
    """Open n idle connections, measure the proxy's RSS while they are open, close them."""
    gate = asyncio.Semaphore(CONCURRENCY)
    tasks = [asyncio.create_task(_one_client(port, gate)) for _ in range(n)]
    writers: list[asyncio.StreamWriter] = []
    try:
        writers = await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        # Let the proxy settle: freed buffers, idle timers armed, and every connection past lbd's
        # idle trim (it drops an idle connection's parser and last request after 1 s).
        await asyncio.sleep(SETTLE_S)
        return rss_kib(pid)
    finally:
        for task in tasks:
            task.cancel()
        for writer in writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)


def measure(endpoint: Endpoint, connections: int, timeout: float = 60.0) -> RssResult:
    assert endpoint.pid is not None, "direct has no proxy process to measure"
    baseline = rss_kib(endpoint.pid)
    loaded = asyncio.run(_hold_idle(endpoint.port, connections, endpoint.pid, timeout))
    return RssResult(
        proxy=endpoint.name,
        connections=connections,
        baseline_kib=baseline,
        loaded_kib=loaded,
        per_connection_bytes=round((loaded - baseline) * 1024 / connections, 1),
    )


def render(results: list[RssResult]) -> str:
    lines = ["== RSS per idle keep-alive connection (VmRSS, process tree) =="]
    lines.append(
        f"{'proxy':<8} {'conns':>6} {'baseline MiB':>13} {'loaded MiB':>11} {'bytes/conn':>11}"
    )
    for r in results:
        lines.append(
            f"{r.proxy:<8} {r.connections:>6} {r.baseline_kib / 1024:>13.1f} "
            f"{r.loaded_kib / 1024:>11.1f} {r.per_connection_bytes:>11,.0f}"
        )
    return "\n".join(lines)
