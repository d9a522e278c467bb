"""The shared deadline wheel (lbd/proxy/timer.py), driven on a real uvloop loop.

State-machine style: set, move later, move earlier, clear, cancel; assert what fired and when.
Bounds are generous on the late side (a loaded CI machine) and exact on the early side: a
deadline must never fire before its time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from lbd.proxy.timer import RESOLUTION, Deadline, wheel_of

pytestmark = pytest.mark.timeout(30)


class Call:
    """A deadline owner that runs a function when its deadline expires."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn

    def on_deadline(self) -> None:
        self.fn()


class Recorder:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fired: list[tuple[str, float]] = []

    def deadline(self, name: str) -> Deadline:
        return Deadline(self.loop, Call(lambda: self.fired.append((name, self.loop.time()))))


async def _until(pred: object, limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred() and loop.time() < end:  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_a_deadline_fires_once_never_early() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    d = rec.deadline("a")
    start = loop.time()
    d.set(0.2)
    await _until(lambda: rec.fired)
    await asyncio.sleep(3 * RESOLUTION)
    assert [name for name, _ in rec.fired] == ["a"]
    assert rec.fired[0][1] >= start + 0.2
    assert d.when == 0.0


async def test_moving_a_deadline_later_defers_it() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    d = rec.deadline("a")
    start = loop.time()
    d.set(0.1)
    d.set(0.5)  # stays filed in the early slot, re-filed when that slot fires
    await _until(lambda: rec.fired)
    assert rec.fired and rec.fired[0][1] >= start + 0.5


async def test_moving_a_deadline_earlier_brings_it_forward() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    d = rec.deadline("a")
    start = loop.time()
    d.set(30.0)
    d.set(0.1)
    await _until(lambda: rec.fired, limit=5.0)
    assert rec.fired, "the earlier deadline did not fire"
    assert start + 0.1 <= rec.fired[0][1] < start + 5.0


async def test_clear_and_cancel_fire_nothing_and_cancel_unfiles() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    cleared, cancelled = rec.deadline("cleared"), rec.deadline("cancelled")
    cleared.set(0.1)
    cancelled.set(0.1)
    wheel = wheel_of(loop)
    before = wheel.pending()
    cancelled.cancel()
    assert wheel.pending() == before - 1  # a closed connection is not held by the wheel
    cleared.clear()
    await asyncio.sleep(0.4)
    assert rec.fired == []


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    rec = Recorder(loop)

    def boom() -> None:
        raise RuntimeError("bug in one connection")

    bad = Deadline(loop, Call(boom))
    good = rec.deadline("good")
    bad.set(0.1)
    good.set(0.1)
    await _until(lambda: rec.fired)
    assert [n for n, _ in rec.fired] == ["good"]
    assert errors and isinstance(errors[0].get("exception"), RuntimeError)


async def test_many_deadlines_fire_in_time_order() -> None:
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    deadlines = [rec.deadline(str(i)) for i in range(200)]
    start = loop.time()
    for i, d in enumerate(reversed(deadlines)):
        d.set(0.05 + 0.002 * (199 - i))  # deadline "k" is due at start + 0.05 + 0.002 k
    await _until(lambda: len(rec.fired) == 200)
    assert len(rec.fired) == 200
    for name, at in rec.fired:
        assert at >= start + 0.05 + 0.002 * int(name)
    # Slots fire in order. A slot that wakes a hair early re-files what is not yet due into the
    # next slot, so order holds to within one slot, never more.
    slots = [int((start + 0.05 + 0.002 * int(n)) / RESOLUTION) for n, _ in rec.fired]
    highest = slots[0]
    for slot in slots:
        assert slot >= highest - 1
        highest = max(highest, slot)
    assert wheel_of(loop).pending() == 0


async def test_a_slot_emptied_a_little_early_refiles_to_a_later_slot_not_forever() -> None:
    # A tick that runs a few ms before a slot starts (loop timers round to the millisecond, a
    # busy loop runs late) empties that slot and must re-file what is not yet due into a later
    # slot. Refiling into the slot being emptied spun the event loop forever.
    loop = asyncio.get_running_loop()
    rec = Recorder(loop)
    early, late = rec.deadline("early"), rec.deadline("late")
    start = loop.time()
    early.set(0.01)
    index = int((start + 0.2) / RESOLUTION) + 1
    late.set(index * RESOLUTION - 0.0005 - start)  # just before its slot's end
    busy_until = late.when - 0.001

    def busy() -> None:  # the loop is blocked until 1 ms before `late` is due
        while loop.time() < busy_until:
            time.sleep(0.0002)

    loop.call_soon(busy)
    await asyncio.wait_for(_until(lambda: len(rec.fired) == 2), timeout=5)
    assert [n for n, _ in rec.fired] == ["early", "late"]
    assert rec.fired[1][1] >= index * RESOLUTION - 0.0005  # never early


async def test_a_callback_that_cancels_deadlines_of_its_own_slot_stops_them() -> None:
    loop = asyncio.get_running_loop()
    events: list[str] = []
    victims = [Deadline(loop, Call(lambda i=i: events.append(f"victim{i}"))) for i in range(50)]

    def kill() -> None:
        events.append("killer")
        for v in victims:
            v.cancel()

    killer = Deadline(loop, Call(kill))
    # One instant, so one slot, iterated in arbitrary order: victims met before the killer
    # fire, the ones after it must not.
    killer.set(0.1)
    for v in victims:
        v.set(0.1)
    await asyncio.sleep(0.4)
    assert "killer" in events
    assert events.index("killer") == len(events) - 1, events
    assert all(v.when == 0.0 for v in victims)
    assert wheel_of(loop).pending() == 0


def test_each_loop_keeps_its_own_wheel_when_loops_alternate() -> None:
    # wheel_of remembers the last loop it served: alternating loops must still get their own.
    import uvloop

    one, two = uvloop.new_event_loop(), uvloop.new_event_loop()
    try:
        first = wheel_of(one)
        assert wheel_of(one) is first
        second = wheel_of(two)
        assert second is not first
        assert wheel_of(one) is first
        assert wheel_of(two) is second
    finally:
        one.close()
        two.close()
