"""The interface every balancing algorithm implements.

Rules (after HAProxy's lb_*.c): an algorithm sees servers only through `ServerState.usable()`
and the events below, never parses HTTP (a hash key is extracted by the caller), and a retry
passes the server to avoid. `pick` returns None when no server is usable.
"""

from __future__ import annotations

from typing import Protocol

from lbd.state import ServerState


class Balancer(Protocol):
    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        """Choose a usable server; `key` is the hash key (hash algorithms only)."""
        ...

    def servers_changed(self) -> None:
        """A server went up or down, changed admin state or weight: rebuild what depends on it."""
        ...

    def request_started(self, server: ServerState) -> None: ...

    def request_finished(self, server: ServerState, seconds: float) -> None: ...
