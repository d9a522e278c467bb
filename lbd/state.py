"""The live state of one server, kept across reloads by identity (backend name, server name).

Rules: two independent states, as in HAProxy and Pingora. `admin` is the operator's (READY,
DRAIN, MAINT); `up` is the health checks' (one truth, fed by active and passive checks). The
balancer only sees servers through `usable()`; persistence may still reach a DRAIN server.
Only `health` (lbd/health/state.py, the rise/fall machine) writes `up`; `observer` is the passive
check's error counter (None unless the backend has `observe`), read per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.config.schema import Server
from lbd.health.state import HealthState
from lbd.stats.counters import ServerCounters

if TYPE_CHECKING:
    from lbd.health.passive import Observer
    from lbd.proxy.connpool import ConnPool

ADMIN_STATES = ("ready", "drain", "maint")
WEIGHT_SCALE = 16


class ServerState:
    __slots__ = (
        "admin",
        "backend_name",
        "config",
        "counters",
        "eweight",
        "health",
        "inflight",
        "name",
        "observer",
        "pool",
        "up",
        "weight",
    )

    def __init__(self, backend_name: str, config: Server, pool: ConnPool) -> None:
        self.backend_name = backend_name
        self.name = config.name
        self.config = config
        self.admin: str = config.state
        self.up = True
        self.weight = config.weight  # effective weight; the operator may change it at runtime
        # What balancers use: weight × WEIGHT_SCALE, lowered during slow start. The scale (HAProxy
        # uses 16 too) lets a weight-1 server ramp up in steps finer than "0 or 1".
        self.eweight = config.weight * WEIGHT_SCALE
        self.inflight = 0
        self.counters = ServerCounters()
        self.pool = pool
        # Health: the rise/fall machine owns `up` (UP and unchecked until the health manager
        # configures it); the passive observer, when the backend observes traffic.
        self.health = HealthState(self)
        self.observer: Observer | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return (self.backend_name, self.name)

    def has_room(self) -> bool:
        """Below `maxconn` (0: unlimited)? A full server is skipped; if all are, requests wait."""
        maxconn = self.config.maxconn
        return maxconn == 0 or self.inflight < maxconn

    def set_weight(self, weight: int) -> None:
        """The operator's (or the file's) weight; the effective weight follows at once."""
        self.weight = weight
        self.eweight = weight * WEIGHT_SCALE

    def usable(self) -> bool:
        """May the balancer send new traffic here?"""
        return self.up and self.admin == "ready" and self.eweight > 0

    def status(self) -> str:
        """HAProxy-style status for stats pages: MAINT and DRAIN win over UP/DOWN."""
        if self.admin == "maint":
            return "MAINT"
        if not self.up:
            return "DOWN"
        if self.admin == "drain":
            return "DRAIN"
        return "UP"

    def __repr__(self) -> str:
        return f"<ServerState {self.backend_name}/{self.name} {self.status()}>"
