"""The periodic sweep of one stick table: expired entries leave even when nobody asks for them.

Rules: one timer per table, on the event loop; each tick does bounded work (`StickTable.sweep`'s
budget) and comes back at once when the budget ran out, else after `interval`. The sweeper
follows its table across reloads; a table that a reload drops has its sweeper stopped.
"""

from __future__ import annotations

import asyncio

from lbd.sticky.table import StickTable

BUSY_DELAY = 0.01  # seconds before the next tick when the last one hit its budget


def sweep_interval(expire: float) -> float:
    """A quarter of the expiry, between 100 ms and 10 s: memory comes back soon after expiry
    without waking the loop often for long-lived tables (lookups check expiry themselves)."""
    return min(max(expire / 4, 0.1), 10.0)


class TableSweeper:
    __slots__ = ("_handle", "_loop", "table")

    def __init__(self, loop: asyncio.AbstractEventLoop, table: StickTable) -> None:
        self._loop = loop
        self.table = table
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(sweep_interval(self.table.expire), self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        budget = 10_000
        dropped = self.table.sweep(self._loop.time(), budget)
        delay = BUSY_DELAY if dropped >= budget else sweep_interval(self.table.expire)
        self._handle = self._loop.call_later(delay, self._tick)
