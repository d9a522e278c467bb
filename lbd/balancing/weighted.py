"""Helpers shared by the algorithms that draw or hash over weights (not an algorithm itself).

`WeightedSet` keeps the usable servers with their cumulative weights, so `at(r)` maps a number in
`[0, total)` to a server in O(log n) (bisect): `r = hash % total` is HAProxy's map-based hash,
`r = random` a weighted draw. `draw_distinct` draws the candidates of a power-of-d-choices pick.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from random import Random

from lbd.state import ServerState


def runtime_weight(server: ServerState) -> int:
    """The effective weight: what the configuration or `set server weight` says now."""
    return server.eweight


class WeightedSet:
    """The usable servers of a list, in declared order, with their running weight totals."""

    __slots__ = ("_cursor", "_seen", "cumulative", "members", "servers", "total", "weight")

    def __init__(
        self,
        servers: list[ServerState],
        weight: Callable[[ServerState], int] = runtime_weight,
    ) -> None:
        self.servers = servers
        self.weight = weight
        self.members: list[ServerState] = []
        self.cumulative: list[int] = []  # cumulative[i] = sum of the weights of members[0..i]
        self.total = 0
        self._seen: dict[int, int] = {}  # id(server) → weight it has in the set (absent: out)
        self._cursor = 0  # the server `scrub` checks next
        self.rebuild()

    def rebuild(self) -> None:
        """O(n): after a server changed (up/down, admin state, weight)."""
        members: list[ServerState] = []
        cumulative: list[int] = []
        seen: dict[int, int] = {}
        total = 0
        for s in self.servers:
            if s.usable():
                w = self.weight(s)
                if w > 0:
                    total += w
                    members.append(s)
                    cumulative.append(total)
                    seen[id(s)] = w
        self._seen = seen
        self.members = members
        self.cumulative = cumulative
        self.total = total

    def scrub(self) -> None:
        """Re-check one server per call, in turn: a missed event (up, down, weight) is found
        within n calls and costs the rebuild the event would have. O(1) otherwise."""
        servers = self.servers
        if servers:
            i = self._cursor
            self._cursor = i + 1 if i + 1 < len(servers) else 0
            s = servers[i]
            w = self.weight(s) if s.usable() else 0
            if w != self._seen.get(id(s), 0):
                self.rebuild()

    def index_at(self, r: int) -> int:
        """The member whose weight interval holds `r` (0 <= r < total): O(log n)."""
        return bisect_right(self.cumulative, r)


def draw_distinct(
    ws: WeightedSet, rng: Random, count: int, avoid: ServerState | None
) -> list[ServerState]:
    """Up to `count` distinct usable members other than `avoid`, each drawn with probability
    proportional to its weight. O(count · log n) expected.

    Draws are distinct because with replacement a server may be compared with itself: with two
    servers, one slow, "power of two choices" would still send it a quarter of the traffic.
    Rejection keeps the cost independent of n; after a bounded number of misses (one server
    holding nearly all the weight) the remaining candidates are taken in declared order.
    """
    members = ws.members
    m = len(members)
    if m <= count + (avoid is not None):
        # Every member is a candidate; a random rotation keeps ties from favouring the first.
        start = rng.randrange(m) if m else 0
        rotated = members[start:] + members[:start]
        return [s for s in rotated if s is not avoid and s.usable()][:count]
    chosen: list[ServerState] = []
    total = ws.total
    cumulative = ws.cumulative
    attempts = 4 * count + 4
    while len(chosen) < count and attempts:
        attempts -= 1
        s = members[bisect_right(cumulative, rng.randrange(total))]
        if s is avoid or s in chosen:
            continue
        chosen.append(s)
    if len(chosen) < count:
        start = rng.randrange(m)
        for k in range(m):
            s = members[(start + k) % m]
            if s is not avoid and s not in chosen:
                chosen.append(s)
                if len(chosen) == count:
                    break
    return chosen
