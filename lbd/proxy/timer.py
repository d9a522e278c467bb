"""One lazily re-armed timer per connection.

Why: a keep-alive request moves a connection through several phases (idle, headers, body,
waiting), each with its own timeout. Cancelling and creating a loop timer at each phase change
costs microseconds per request. Instead the deadline is a plain float; the loop timer is only
re-armed when the new deadline is *earlier* than the one armed, and when a timer fires early
(the deadline moved later meanwhile) it re-arms itself once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_armed_at", "_callback", "_handle", "_loop", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self.when = 0.0  # 0: no deadline

    def set(self, seconds: float) -> None:
        when = self._loop.time() + seconds
        self.when = when
        if self._handle is None or self._armed_at > when:
            if self._handle is not None:
                self._handle.cancel()
            self._armed_at = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        self.when = 0.0  # the armed timer, if any, will find nothing to do

    def cancel(self) -> None:
        self.when = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when == 0.0:
            return
        if self._loop.time() < when:
            self._armed_at = when
            self._handle = self._loop.call_at(when, self._fire)
            return
        self.when = 0.0
        self._callback()
