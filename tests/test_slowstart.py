"""Slow start ramps a returning server's effective weight linearly up to its target."""

from __future__ import annotations

import asyncio

from lbd.balancing.slowstart import STEPS, SlowStarts
from lbd.config.schema import Address, Server
from lbd.proxy.connpool import idle_pool
from lbd.state import ServerState


def _server(weight: int, slowstart: float) -> ServerState:
    cfg = Server(name="s1", address=Address("127.0.0.1", 1), weight=weight, slowstart=slowstart)
    return ServerState("app", cfg, idle_pool(cfg.address))


async def test_weight_ramps_linearly_to_target_and_notifies_each_step() -> None:
    server = _server(weight=40, slowstart=0.2)
    seen: list[int] = []
    ramps = SlowStarts()
    ramps.begin(server, lambda s: seen.append(s.eweight))
    await asyncio.sleep(0.35)
    assert len(seen) == STEPS
    assert seen == [
        s * 16 for s in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40)
    ]
    assert server.eweight == 40 * 16 and server.weight == 40


async def test_without_slowstart_nothing_changes() -> None:
    server = _server(weight=10, slowstart=0.0)
    seen: list[int] = []
    SlowStarts().begin(server, lambda s: seen.append(s.eweight))
    await asyncio.sleep(0.05)
    assert seen == [] and server.eweight == 10 * 16


async def test_stopped_ramp_restores_full_weight() -> None:
    server = _server(weight=10, slowstart=5.0)
    seen: list[int] = []
    ramps = SlowStarts()
    ramps.begin(server, lambda s: seen.append(s.eweight))
    await asyncio.sleep(0.01)
    assert server.eweight == 8  # first step of a 20-step ramp to 10 × 16
    ramps.stop(server)
    await asyncio.sleep(0.01)
    assert server.eweight == 160 and seen[-1] == 160
