"""Slow start: a server that comes back ramps its effective weight up instead of taking its
full share at once (HAProxy's `slowstart`). A server just restarted has cold caches and a JIT
that has not warmed up; an EHR application server flooded at once times out its first users.

Rules: the effective weight (`eweight`, the weight × 16 that balancers use, as in HAProxy) goes
linearly from 1/20 of the target to the target over `slowstart` seconds, in 20 steps (each
tells the balancer, `server_changed`), never below 1; the scale makes the ramp real even for a
weight-1 server.
The target is the operator's current weight. A new ramp replaces a running one; a server that
goes down again stops its ramp.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from lbd.state import WEIGHT_SCALE, ServerState

STEPS = 20

Notify = Callable[[ServerState], None]


class SlowStarts:
    """The running ramps of one process, one per server at most."""

    def __init__(self) -> None:
        self._tasks: dict[ServerState, asyncio.Task[None]] = {}

    def begin(self, server: ServerState, notify: Notify) -> None:
        """Start (or restart) the ramp of `server`; no-op without `slowstart`."""
        duration = server.config.slowstart
        if duration <= 0 or server.weight <= 0:
            return
        running = self._tasks.pop(server, None)
        if running is not None:
            running.cancel()
        target = server.weight * WEIGHT_SCALE  # the operator's weight, scaled as balancers use it
        task = asyncio.get_running_loop().create_task(self._ramp(server, target, duration, notify))
        self._tasks[server] = task
        task.add_done_callback(self._forget(server))

    def _forget(self, server: ServerState) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            if self._tasks.get(server) is task:
                del self._tasks[server]

        return done

    def stop(self, server: ServerState) -> None:
        task = self._tasks.pop(server, None)
        if task is not None:
            task.cancel()

    def stop_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    @staticmethod
    async def _ramp(server: ServerState, target: int, duration: float, notify: Notify) -> None:
        try:
            for step in range(1, STEPS + 1):
                server.eweight = max(1, math.ceil(target * step / STEPS))
                notify(server)
                if step < STEPS:
                    await asyncio.sleep(duration / STEPS)
        except asyncio.CancelledError:
            server.eweight = target  # stopped early (went down, replaced): full weight again
            notify(server)
            raise
