"""Smooth weighted round-robin (nginx's algorithm, HAProxy's `roundrobin` order).

Each pick adds every usable server's weight to its running score, takes the highest score and
subtracts the total weight from it. Weights 5:1:1 give `a a b a c a a`: the heavy server is
spread out instead of served in a burst. O(n) per pick over usable servers; fine for the tens of
servers an EHR backend has (the balancing issue brings an O(1) variant for large farms).
"""

from __future__ import annotations

from lbd.state import ServerState


class RoundRobin:
    __slots__ = ("_scores", "_servers")

    def __init__(self, servers: list[ServerState]) -> None:
        self._servers = servers
        self._scores: dict[int, int] = {id(s): 0 for s in servers}

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        best: ServerState | None = None
        best_score = 0
        total = 0
        scores = self._scores
        for s in self._servers:
            if s is avoid or not s.usable():
                continue
            w = s.weight
            score = scores[id(s)] + w
            scores[id(s)] = score
            total += w
            if best is None or score > best_score:
                best = s
                best_score = score
        if best is not None:
            scores[id(best)] = best_score - total
        return best

    def servers_changed(self) -> None:
        # Reset scores so a returning server does not get a burst from an old, large score.
        for k in self._scores:
            self._scores[k] = 0

    def request_started(self, server: ServerState) -> None:
        pass

    def request_finished(self, server: ServerState, seconds: float) -> None:
        pass
