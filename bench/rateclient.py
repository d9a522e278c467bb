"""An open-loop HTTP client at a fixed request rate that counts every failure precisely.

Rules: requests start on schedule whatever the proxy does (open loop: a stall shows up as latency
and failures, not as a politely slower client, unlike wrk's closed loop); each request is a GET
on a pooled keep-alive connection, or on a fresh one for every `fresh_every`-th request (so
refused connections are seen too); outcomes are answered (status 200), or failed by kind —
`refused` (connect failed), `timeout`, `closed` (connection lost before the answer), `HTTP nnn`;
requests the client could not even start because `max_in_flight` were pending are counted as
`client overloaded`, never silently dropped. Latencies are kept per module (first path segment).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from heldconns import REQUEST_TIMEOUT_S, Held

TICK_S = 0.005


def _request(path: str, close: bool) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"User-Agent: lbd-bench-faults\r\n" + connection + b"\r\n"
    )


def module_of(path: str) -> str:
    return path.split("/")[1].split("?")[0] or "/"


@dataclass
class Outcome:
    sent: int = 0
    answered: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    # Failures by second since the start (for the report: when did they happen).
    failure_times_s: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def fail(self, kind: str, at: float) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.failure_times_s.append(round(at, 2))

    def percentile(self, q: float, modules: Sequence[str] | None = None) -> float | None:
        """q-th percentile (0-100) of latencies, over `modules` (default all); None if empty."""
        values = sorted(
            v for m, vs in self.latencies_ms.items() if modules is None or m in modules for v in vs
        )
        if not values:
            return None
        return round(values[min(len(values) - 1, int(len(values) * q / 100))], 2)


class RateClient:
    """GETs to 127.0.0.1:port at `rate` per second for `duration` seconds, cycling `paths`."""

    def __init__(
        self,
        port: int,
        paths: Sequence[str],
        rate: float,
        duration: float,
        fresh_every: int = 0,
        max_in_flight: int = 4000,
    ) -> None:
        self.port = port
        self.paths = list(paths)
        self.rate = rate
        self.duration = duration
        self.fresh_every = fresh_every
        self.max_in_flight = max_in_flight
        self.outcome = Outcome()
        self._idle: list[Held] = []
        self._in_flight = 0
        self._start = 0.0

    async def run(self) -> Outcome:
        self._start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        launched = 0
        while (elapsed := time.monotonic() - self._start) < self.duration:
            due = int(elapsed * self.rate)
            while launched < due:
                path = self.paths[launched % len(self.paths)]
                fresh = self.fresh_every > 0 and launched % self.fresh_every == 0
                launched += 1
                if self._in_flight >= self.max_in_flight:
                    self.outcome.sent += 1
                    self.outcome.fail("client overloaded", elapsed)
                    continue
                task = asyncio.create_task(self._one(path, fresh))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(TICK_S)
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 2)
        for held in self._idle:
            if held.transport is not None:
                held.transport.close()
        return self.outcome

    async def _one(self, path: str, fresh: bool) -> None:
        out = self.outcome
        out.sent += 1
        self._in_flight += 1
        started = time.monotonic()
        held: Held | None = None
        try:
            while self._idle and not fresh and held is None:
                held = self._idle.pop()
                if held.lost:  # the proxy closed it while idle (a browser would reconnect too)
                    held = None
            if held is None:
                try:
                    _, held = await asyncio.get_running_loop().create_connection(
                        Held, "127.0.0.1", self.port
                    )
                except OSError:
                    out.fail("refused", started - self._start)
                    return
            try:
                status = await held.ask(_request(path, fresh))
            except TimeoutError:
                out.fail("timeout", started - self._start)
                held.lost = True
                return
            except ConnectionError:
                out.fail("closed", started - self._start)
                return
            if status != 200:
                out.fail(f"HTTP {status}", started - self._start)
                return
            out.answered += 1
            ms = (time.monotonic() - started) * 1000
            out.latencies_ms.setdefault(module_of(path), []).append(ms)
        finally:
            self._in_flight -= 1
            if held is not None:
                if fresh or held.lost:
                    if held.transport is not None:
                        with contextlib.suppress(Exception):
                            held.transport.close()
                else:
                    self._idle.append(held)
