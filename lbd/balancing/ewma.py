"""`ewma`: peak-EWMA response time × load, power of two choices (Finagle's and Linkerd's).

Cost of a server: `latency estimate × (inflight + 1) / weight`, the time a new request can expect
to wait there. Pick: draw `draws` (default 2) distinct servers by weight, keep the cheapest.

The latency estimate (`request_finished` feeds it; `seconds` as base.py says):
- peak: a sample above the current estimate replaces it at once, so a server that turns slow
  loses most of its traffic after its first slow answer, not after a decay period;
- a sample below it pulls the estimate toward the observed value with weight `1 − e^(−Δ/τ)`,
  Δ the time since the server's previous sample, τ = 1 s: the average over about the last
  second. Finagle and Linkerd use 10 s, but with few servers (both drawn by power-of-two) a
  sidelined server then waits ~20 s before it is tried again; an EHR pool of 2–4 servers must
  get a recovered server back within seconds. The peak rule above is what sidelines a slow
  server at once, whatever τ is;
- between samples the estimate decays toward 0 (`e^(−Δ/τ)` again): a server that got no traffic
  because it was slow is tried again after a while, and its fresh samples (fast, if it recovered)
  bring it back. Reads do not change the state; the decay is computed from the last sample time.
A server never measured yet costs 0 while idle and a large penalty while it has a request in
flight (Finagle): new servers get one probe at a time until their first answer.

Cost: O(draws · log n) per pick, O(1) per `request_finished` (one `exp`). The clock is injected
(`time.monotonic` by default) so tests can drive time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from math import exp
from random import Random
from typing import Final

from lbd.balancing.weighted import WeightedSet, draw_distinct
from lbd.state import ServerState

DECAY_SECONDS: Final = 1.0
UNMEASURED_PENALTY: Final = 1e9  # seconds; above any real cost, so a probe in flight is not doubled


class Ewma:
    __slots__ = ("_clock", "_draws", "_estimate", "_position", "_rng", "_set", "_stamp", "_tau")

    def __init__(
        self,
        servers: list[ServerState],
        draws: int = 2,
        rng: Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        decay: float = DECAY_SECONDS,
    ) -> None:
        self._set = WeightedSet(servers)
        self._draws = max(1, draws)
        self._rng = rng if rng is not None else Random()
        self._clock = clock
        self._tau = decay
        self._position = {id(s): i for i, s in enumerate(servers)}
        self._estimate: list[float | None] = [None] * len(servers)  # seconds; None: no sample
        self._stamp = [0.0] * len(servers)  # clock() at the server's last sample

    def servers_changed(self) -> None:
        self._set.rebuild()

    def server_changed(self, server: ServerState) -> None:
        self._set.rebuild()

    def request_started(self, server: ServerState) -> None:
        pass

    def request_finished(self, server: ServerState, seconds: float) -> None:
        """Fold one latency sample into the server's peak-EWMA: O(1)."""
        i = self._position[id(server)]
        now = self._clock()
        rtt = seconds if seconds > 0.0 else 0.0
        old = self._estimate[i]
        if old is None:
            self._estimate[i] = rtt
        else:
            w = exp(-max(now - self._stamp[i], 0.0) / self._tau)
            if rtt > old * w:
                self._estimate[i] = rtt  # peak: trust bad news at once
            else:
                self._estimate[i] = old * w + rtt * (1.0 - w)
        self._stamp[i] = now

    def latency(self, server: ServerState, now: float) -> float | None:
        """The current estimate, decayed to `now`; None before the first sample."""
        i = self._position[id(server)]
        est = self._estimate[i]
        if est is None:
            return None
        return est * exp(-max(now - self._stamp[i], 0.0) / self._tau)

    def cost(self, server: ServerState, now: float) -> float:
        inflight = server.inflight if server.inflight > 0 else 0
        est = self.latency(server, now)
        if est is None:
            return UNMEASURED_PENALTY + inflight if inflight else 0.0
        return est * (inflight + 1) / server.eweight

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        self._set.scrub()
        candidates = draw_distinct(self._set, self._rng, self._draws, avoid)
        if not all(s.usable() for s in candidates):
            self._set.rebuild()  # a missed event: draw again without the unusable server
            candidates = draw_distinct(self._set, self._rng, self._draws, avoid)
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        now = self._clock()
        best: ServerState | None = None
        best_cost = 0.0
        for s in candidates:
            c = self.cost(s, now)
            if best is None or c < best_cost:
                best, best_cost = s, c
        return best
