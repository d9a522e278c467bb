"""Maps a backend's `balance:` to the algorithm that implements it."""

from __future__ import annotations

from collections.abc import Callable

from lbd.balancing.base import Balancer
from lbd.balancing.roundrobin import RoundRobin
from lbd.config.schema import Balance
from lbd.state import ServerState

_FACTORIES: dict[str, Callable[[Balance, list[ServerState]], Balancer]] = {
    "roundrobin": lambda cfg, servers: RoundRobin(servers),
}


def make_balancer(cfg: Balance, servers: list[ServerState]) -> Balancer:
    """Build the algorithm; ones not implemented yet fall back to roundrobin, logged by caller."""
    factory = _FACTORIES.get(cfg.algorithm, _FACTORIES["roundrobin"])
    return factory(cfg, servers)


def implemented(algorithm: str) -> bool:
    return algorithm in _FACTORIES
