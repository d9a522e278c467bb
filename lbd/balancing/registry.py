"""Maps a backend's `balance:` to the algorithm that implements it.

`source`, `uri`, `hdr(NAME)` and `cookie(NAME)` share the hash implementations; they differ only
in the key the caller extracts (keys.py), chosen by `hash_type`.
"""

from __future__ import annotations

from collections.abc import Callable

from lbd.balancing.base import Balancer
from lbd.balancing.chash import ConsistentHash
from lbd.balancing.ewma import Ewma
from lbd.balancing.first import First
from lbd.balancing.leastconn import LeastConn
from lbd.balancing.maphash import MapHash
from lbd.balancing.random_draws import RandomDraws
from lbd.balancing.roundrobin import RoundRobin
from lbd.balancing.staticrr import StaticRoundRobin
from lbd.config.schema import Balance
from lbd.state import ServerState


def _hash(cfg: Balance, servers: list[ServerState]) -> Balancer:
    if cfg.hash_type == "consistent":
        return ConsistentHash(servers, cfg.hash_balance_factor)
    return MapHash(servers)


_FACTORIES: dict[str, Callable[[Balance, list[ServerState]], Balancer]] = {
    "roundrobin": lambda cfg, servers: RoundRobin(servers),
    "static-rr": lambda cfg, servers: StaticRoundRobin(servers),
    "leastconn": lambda cfg, servers: LeastConn(servers),
    "first": lambda cfg, servers: First(servers),
    "source": _hash,
    "uri": _hash,
    "hdr": _hash,
    "cookie": _hash,
    "random": lambda cfg, servers: RandomDraws(servers, cfg.draws),
    "ewma": lambda cfg, servers: Ewma(servers, cfg.draws),
}


def make_balancer(cfg: Balance, servers: list[ServerState]) -> Balancer:
    """Build the algorithm for `cfg` over `servers` (a backend's active servers, in order)."""
    factory = _FACTORIES.get(cfg.algorithm, _FACTORIES["roundrobin"])
    return factory(cfg, servers)


def implemented(algorithm: str) -> bool:
    return algorithm in _FACTORIES
