"""Connection deadlines on one shared, coarse timer wheel per event loop.

Why not a loop timer per connection: a uvloop TimerHandle costs ~600 bytes (a libuv timer plus
its Python wrapper), and 25,000 idle keep-alive connections would pay 15 MB for timers alone.
Every connection timeout here is seconds long, so deadlines are filed into slots of
`RESOLUTION` seconds, and one loop timer wakes for the earliest non-empty slot. A deadline costs
a slot-set entry instead.

Rules:
- A deadline never fires early: it is filed in the first slot that starts after it, and a slot
  that fires re-files any deadline that moved later meanwhile. It may fire up to `RESOLUTION`
  late, which is nothing next to timeouts of seconds.
- `set()` is cheap when the deadline moves later (the common case: each keep-alive request pushes
  the deadline out): the entry stays in its earlier slot and is re-filed once when that slot
  fires. Only moving a deadline *earlier* touches the wheel.
- `cancel()` removes the entry at once so a closed connection is not kept alive by the wheel.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from typing import Final, Protocol

RESOLUTION: Final = 0.05  # seconds per slot
# A loop timer may wake a little before the instant it was set for (millisecond rounding): a
# slot counts as due this close to its start, and what it holds that is not yet due is re-filed
# in a *later* slot, never the one being emptied (that would spin forever).
_EARLY: Final = 0.002  # seconds


class TimerWheel:
    """The slots of one event loop: slot index → deadlines filed there; one loop timer."""

    __slots__ = ("__weakref__", "_armed", "_handle", "_heap", "_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Deadline]] = {}
        self._heap: list[int] = []  # slot indices present in _slots, earliest first
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0  # slot index the loop timer is set for; 0: none

    def file(self, deadline: Deadline, when: float, after: int = 0) -> None:
        """File `deadline` in the first slot that starts after `when` and after slot `after`."""
        index = int(when / RESOLUTION) + 1
        if index <= after:
            index = after + 1
        deadline._slot = index
        deadline._refile_below = (index - 1) * RESOLUTION
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = set()
            heapq.heappush(self._heap, index)
        slot.add(deadline)
        if self._armed == 0 or index < self._armed:
            self._arm(index)

    def unfile(self, deadline: Deadline) -> None:
        slot = self._slots.get(deadline._slot)
        if slot is not None:
            slot.discard(deadline)
        deadline._slot = 0
        deadline._refile_below = _NOT_FILED

    def pending(self) -> int:
        """Deadlines filed (for tests and the memory bench)."""
        return sum(len(s) for s in self._slots.values())

    def _arm(self, index: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = index
        self._handle = self._loop.call_at(index * RESOLUTION, self._tick)

    def _tick(self) -> None:
        self._handle = None
        self._armed = 0
        loop = self._loop
        now = loop.time()
        due = int((now + _EARLY) / RESOLUTION)
        heap = self._heap
        # Take the due slots out first: whatever callbacks or re-filing put on the wheel while
        # they are emptied waits for a later tick.
        slots: list[tuple[int, set[Deadline]]] = []
        while heap and heap[0] <= due:
            index = heapq.heappop(heap)
            slot = self._slots.pop(index, None)
            if slot:
                slots.append((index, slot))
        for index, slot in slots:
            for deadline in slot:
                if deadline._slot != index:
                    continue  # a callback already cancelled or re-filed it elsewhere
                deadline._slot = 0
                deadline._refile_below = _NOT_FILED
                when = deadline.when
                if when == 0.0:
                    continue
                if when > now:
                    self.file(deadline, when, after=due)
                    continue
                deadline.when = 0.0
                owner = deadline._owner
                if owner is None:
                    continue  # released
                try:
                    owner.on_deadline()
                except Exception as exc:  # one connection's bug must not stop every timer
                    loop.call_exception_handler(
                        {"message": "deadline owner failed", "exception": exc}
                    )
        # Callbacks may have filed (and armed) later slots; the earliest slot decides.
        if heap and self._armed != heap[0]:
            self._arm(heap[0])


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerWheel] = (
    weakref.WeakKeyDictionary()
)


class _LastWheel:
    """The wheel found last, with a weak reference to its loop. A process runs one loop, so this
    spares the WeakKeyDictionary lookup (an interpreted call) at every new connection. (A wheel
    refers to its loop, so a loop that had one stays alive with it: one per process in lbd,
    one per test loop in the tests.)"""

    __slots__ = ("loop_ref", "wheel")

    def __init__(self) -> None:
        self.loop_ref: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self.wheel: TimerWheel | None = None


_last: Final = _LastWheel()


def wheel_of(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The loop's wheel, created on first use (one per loop, so tests' loops never share one)."""
    ref = _last.loop_ref
    wheel = _last.wheel
    if ref is not None and wheel is not None and ref() is loop:
        return wheel
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = TimerWheel(loop)
    _last.loop_ref = weakref.ref(loop)
    _last.wheel = wheel
    return wheel


_NOT_FILED: Final = float("inf")


class Expiring(Protocol):
    """What a deadline calls when it expires: its owner's `on_deadline`. The owner itself is
    kept rather than a bound method of it, one object fewer per connection (72 bytes)."""

    def on_deadline(self) -> None: ...


class Deadline:
    """One connection's current deadline: `when` is a loop time, 0 when none is set."""

    __slots__ = ("_owner", "_refile_below", "_slot", "_wheel", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Expiring) -> None:
        self._wheel = wheel_of(loop)  # its loop is this deadline's (no field of its own)
        self._owner: Expiring | None = owner
        self._slot = 0  # slot index this deadline is filed in; 0: not filed
        # A new deadline before this instant belongs in an earlier slot than the filed one
        # (infinite when not filed): `set()` decides with one float comparison.
        self._refile_below = _NOT_FILED
        self.when = 0.0

    def set(self, seconds: float) -> None:
        when = self._wheel._loop.time() + seconds
        self.when = when
        if when < self._refile_below:
            wheel = self._wheel
            if self._slot:
                wheel.unfile(self)
            wheel.file(self, when)

    def clear(self) -> None:
        self.when = 0.0  # the filed entry, if any, finds nothing to do when its slot fires

    def cancel(self) -> None:
        self.when = 0.0
        if self._slot:
            self._wheel.unfile(self)

    def release(self) -> None:
        """The owner closed for good: cancel, and forget the owner. The owner holds this
        deadline: a reference cycle that only the cyclic GC would free, after the connection's
        every object had waited for it (measurable per closed connection). A later `set()` is
        harmless: the deadline then expires with nobody to call."""
        self.cancel()
        self._owner = None
