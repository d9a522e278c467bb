"""`random`: power of d choices (HAProxy's `random(<draws>)`, Mitzenmacher's two choices).

Draw `draws` distinct usable servers (default 2), each with probability proportional to its
weight, and keep the one with the smallest `(inflight + 1) / weight` (the first drawn on a tie).
Why not just the least loaded of all: comparing two random servers already takes the maximum
load from O(log n / log log n) down to O(log log n) (the "power of two choices"), costs
O(d log n) instead of O(n), and never herds every request of a burst onto the one server that
looked idle. Why `+ 1`: the load with this request, so weight still counts among idle servers.

The random generator belongs to the instance (seedable for tests; no global state shared with
other code). Cost: O(d log n) per pick (weighted draws by bisect, weighted.py); events other
than up/down/weight are not needed: the loads are read from `server.inflight` at pick time.
"""

from __future__ import annotations

from random import Random

from lbd.balancing.weighted import WeightedSet, draw_distinct
from lbd.state import ServerState


class RandomDraws:
    __slots__ = ("_draws", "_rng", "_set")

    def __init__(self, servers: list[ServerState], draws: int = 2, rng: Random | None = None):
        self._set = WeightedSet(servers)
        self._draws = max(1, draws)
        self._rng = rng if rng is not None else Random()

    def servers_changed(self) -> None:
        self._set.rebuild()

    def server_changed(self, server: ServerState) -> None:
        self._set.rebuild()

    def request_started(self, server: ServerState) -> None:
        pass

    def request_finished(self, server: ServerState, seconds: float) -> None:
        pass

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        self._set.scrub()
        candidates = draw_distinct(self._set, self._rng, self._draws, avoid)
        if not all(s.usable() for s in candidates):
            self._set.rebuild()  # a missed event: draw again without the unusable server
            candidates = draw_distinct(self._set, self._rng, self._draws, avoid)
        best: ServerState | None = None
        best_load = 0.0
        for s in candidates:
            load = (max(s.inflight, 0) + 1) / s.eweight
            if best is None or load < best_load:
                best, best_load = s, load
        return best
