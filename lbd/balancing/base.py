"""The interface every balancing algorithm implements, and the events the caller must send.

Rules (after HAProxy's lb_*.c and Pingora's selection/): an algorithm sees servers only through
`ServerState.usable()`, `.eweight`, `.inflight` and `.config`, and through the events below; it
never parses HTTP (a hash key is extracted by the caller, see `keys.py`) and a retry passes the
server to avoid. `pick` returns None when no server may take the request.

Events, and when the caller sends them:

- `server_changed(server)`: right after one server's `up`, `admin` or `weight` changed (a health
  transition, `set server state|weight`). O(log n) or O(points of that server), never a full
  rebuild where the algorithm can avoid one.
- `servers_changed()`: after several servers changed at once, or when unsure which one did.
- `request_started(server)`: once per request dispatched to `server` (also for a retry's new
  server), when the caller has counted it in `server.inflight`.
- `request_finished(server, seconds)`: exactly once per `request_started`, on every path that
  ends the request on that server (response complete, connect failure, retry elsewhere, client
  abort, timeout). `seconds`: time since `request_started` until the response head arrived, or
  until the failure (ewma's latency sample).

Load-aware algorithms do not count requests themselves: `server.inflight` is the one truth and
the events only say whose count changed; they read it at the next `pick`. So the order of
`inflight += 1`/`-= 1` relative to the event does not matter, as long as both happen before the
next `pick`. A missed up→down event is detected when the algorithm meets the server and costs
one rebuild; a missed down→up event leaves the server out until the next event: send them.
"""

from __future__ import annotations

from typing import Protocol

from lbd.state import ServerState


class Balancer(Protocol):
    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        """Choose a usable server other than `avoid`; `key` is the hash key (hash algorithms
        only; None: no key, fall back to round-robin)."""
        ...

    def servers_changed(self) -> None:
        """Several servers went up or down, changed admin state or weight: rebuild."""
        ...

    def server_changed(self, server: ServerState) -> None:
        """This one server's usability or weight changed."""
        ...

    def request_started(self, server: ServerState) -> None:
        """A request was dispatched to `server` (already counted in `server.inflight`)."""
        ...

    def request_finished(self, server: ServerState, seconds: float) -> None:
        """A request on `server` ended after `seconds` (see the module banner)."""
        ...
