"""The live state of one server, kept across reloads by identity (backend name, server name).

Rules: two independent states, as in HAProxy and Pingora. `admin` is the operator's (READY,
DRAIN, MAINT); `up` is the health checks' (one truth, fed by active and passive checks). The
balancer only sees servers through `usable()`; persistence may still reach a DRAIN server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.config.schema import Server
from lbd.stats.counters import ServerCounters

if TYPE_CHECKING:
    from lbd.proxy.connpool import ConnPool

ADMIN_STATES = ("ready", "drain", "maint")


class ServerState:
    __slots__ = (
        "admin",
        "backend_name",
        "config",
        "counters",
        "inflight",
        "name",
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
        self.inflight = 0
        self.counters = ServerCounters()
        self.pool = pool

    @property
    def identity(self) -> tuple[str, str]:
        return (self.backend_name, self.name)

    def usable(self) -> bool:
        """May the balancer send new traffic here?"""
        return self.up and self.admin == "ready" and self.weight > 0

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
