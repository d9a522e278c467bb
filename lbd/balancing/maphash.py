"""`source`, `uri`, `hdr(NAME)`, `cookie(NAME)` with `hash_type: map-based` (HAProxy's default).

The caller extracts the key (keys.py); the server is the one whose weight interval holds
`hash64(key) % W`, W the total weight of the usable servers, as HAProxy's map-based hash
indexes `hash % total weight` into its server map. A key always reaches the same server while
the set of usable servers and their weights stay the same; when one changes, most keys move
(use `hash_type: consistent` when that matters). No key (`key is None`: header or cookie absent)
falls back to round-robin, as HAProxy does.

Cost: hash (≈0.5 µs, hashing.py) plus a bisect over the cumulative weights, O(log n) with no
table of W entries; an event rebuilds the cumulative list, O(n). When the server is `avoid`
(a retry) the next usable one in declared order takes the request.
"""

from __future__ import annotations

from lbd.balancing.hashing import hash64
from lbd.balancing.roundrobin import RoundRobin
from lbd.balancing.weighted import WeightedSet
from lbd.state import ServerState


class MapHash:
    __slots__ = ("_fallback", "_set")

    def __init__(self, servers: list[ServerState]) -> None:
        self._set = WeightedSet(servers)
        self._fallback = RoundRobin(servers)

    def servers_changed(self) -> None:
        self._set.rebuild()
        self._fallback.servers_changed()

    def server_changed(self, server: ServerState) -> None:
        self.servers_changed()

    def request_started(self, server: ServerState) -> None:
        pass

    def request_finished(self, server: ServerState, seconds: float) -> None:
        pass

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        if key is None:
            return self._fallback.pick(None, avoid)
        h = hash64(key)
        ws = self._set
        ws.scrub()
        while ws.total:
            members = ws.members
            i = ws.index_at(h % ws.total)
            for k in range(len(members)):
                s = members[(i + k) % len(members)]
                if not s.usable():
                    break  # a missed event: rebuild and hash again
                if s is not avoid:
                    return s
            else:
                return None  # `avoid` is the only usable server
            self.servers_changed()
        return None
