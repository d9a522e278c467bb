"""Slow start ramps a returning server's effective weight linearly up to its target."""

from __future__ import annotations

import asyncio

from lbd.balancing.slowstart import STEPS, SlowStarts
from lbd.config.schema import Address, Server
from lbd.state import ServerState


class _Pool:
    pass


def _server(weight: int, slowstart: float) -> ServerState:
    cfg = Server(name="s1", address=Address("127.0.0.1", 1), weight=weight, slowstart=slowstart)
    return ServerState("app", cfg, _Pool())  # type: ignore[arg-type]


async def test_weight_ramps_linearly_to_target_and_notifies_each_step() -> None:
    server = _server(weight=40, slowstart=0.2)
    seen: list[int] = []
    ramps = SlowStarts()
    ramps.begin(server, lambda s: seen.append(s.weight))
    await asyncio.sleep(0.35)
    assert len(seen) == STEPS
    assert seen == sorted(seen) and seen[0] == 2 and seen[-1] == 40
    assert server.weight == 40


async def test_without_slowstart_nothing_changes() -> None:
    server = _server(weight=10, slowstart=0.0)
    seen: list[int] = []
    SlowStarts().begin(server, lambda s: seen.append(s.weight))
    await asyncio.sleep(0.05)
    assert seen == [] and server.weight == 10


async def test_stopped_ramp_restores_full_weight() -> None:
    server = _server(weight=10, slowstart=5.0)
    seen: list[int] = []
    ramps = SlowStarts()
    ramps.begin(server, lambda s: seen.append(s.weight))
    await asyncio.sleep(0.01)
    assert server.weight == 1  # first step of a 20-step ramp to 10
    ramps.stop(server)
    await asyncio.sleep(0.01)
    assert server.weight == 10 and seen[-1] == 10
