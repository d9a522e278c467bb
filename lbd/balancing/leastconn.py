"""`leastconn`: the server with the fewest requests in flight for its weight (HAProxy's fwlc).

Order: idle servers first, then the smallest `(inflight + 1) / weight`; equals take turns.
Why `+ 1`: the ratio is the load the server would have *with* this request, so a weight-10
server with 1 request (0.2) still beats a weight-1 server with 1 request (2.0) instead of tying
at "busy". Why idle first: a server with nothing to do answers fastest whatever its weight; the
ratio alone would queue a second request on a big busy server while a small one sits idle.
The ratio is kept as a float: IEEE division is correctly rounded, so equal ratios (2/4, 1/2)
compare equal and distinct ones (numerators and weights are small integers) never collide.

Structure: a binary heap of (idle?, ratio, sequence, server) entries with lazy deletion, as
HAProxy keeps an ebtree: `pick` reads the top, O(1) plus the stale entries it discards; each
event re-queues one server, O(log n). The sequence number makes equal keys first-in first-out:
a server that just took or finished a request goes behind its equals, hence round-robin among
them. Events are applied at the next `pick`, reading `server.inflight` then (see base.py).
Missed events heal: the top entry is checked against the live count before it is returned, and
every pick re-checks one more server in turn, so a server whose count dropped without an event
(e.g. requests that finished on the previous runtime after a reload) is requeued within n picks.
The heap is compacted when stale entries outnumber live ones (amortized O(1) per event).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from lbd.state import ServerState

_Entry = tuple[int, float, int, ServerState]  # (busy: 0 idle / 1 busy, ratio, sequence, server)


class LeastConn:
    __slots__ = ("_cursor", "_heap", "_live", "_pending", "_seq", "_servers")

    def __init__(self, servers: list[ServerState]) -> None:
        self._servers = servers
        self._heap: list[_Entry] = []
        self._live: dict[int, _Entry] = {}  # id(server) → its live heap entry; absent: out
        self._seq = 0
        self._cursor = 0  # the server the next pick re-checks
        self._pending: list[ServerState] = []  # servers whose inflight changed since last pick
        self.servers_changed()

    @staticmethod
    def _key(server: ServerState) -> tuple[int, float]:
        inflight = server.inflight if server.inflight > 0 else 0
        return (1 if inflight else 0, (inflight + 1) / server.eweight)

    def _requeue(self, server: ServerState) -> None:
        """Put `server` behind its equals, or take it out if it may not serve: O(log n)."""
        if server.usable():
            self._seq += 1
            entry = (*self._key(server), self._seq, server)
            self._live[id(server)] = entry
            heappush(self._heap, entry)
            if len(self._heap) > 2 * len(self._servers) + 16:
                self._compact()
        else:
            self._live.pop(id(server), None)

    def _compact(self) -> None:
        live = self._live
        heap = self._heap
        heap[:] = [e for e in heap if live.get(id(e[3])) == e]  # in place: callers hold it
        heapify(heap)

    # --- events ------------------------------------------------------------------------------

    def servers_changed(self) -> None:
        """O(n): requeue every usable server, declared order first among equals."""
        self._heap = []
        self._live = {}
        self._pending = []
        for s in self._servers:
            if s.usable():
                self._seq += 1
                entry = (*self._key(s), self._seq, s)
                self._live[id(s)] = entry
                self._heap.append(entry)
        heapify(self._heap)

    def server_changed(self, server: ServerState) -> None:
        self._requeue(server)

    def request_started(self, server: ServerState) -> None:
        self._pending.append(server)

    def request_finished(self, server: ServerState, seconds: float) -> None:
        self._pending.append(server)

    # --- picking -----------------------------------------------------------------------------

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        pending = self._pending
        if pending:
            self._pending = []
            done: set[int] = set()
            for s in pending:
                if id(s) not in done:
                    done.add(id(s))
                    self._requeue(s)
        self._scrub()
        best = self._top()
        if best is None or best is not avoid:
            return best
        # The best is the one to avoid: set it aside, take the next, put it back. O(log n).
        aside = heappop(self._heap)
        second = self._top()
        heappush(self._heap, aside)
        return second

    def _scrub(self) -> None:
        """Re-check one server (in turn) against its entry; requeue it if it changed."""
        servers = self._servers
        if servers:
            i = self._cursor
            self._cursor = i + 1 if i + 1 < len(servers) else 0
            s = servers[i]
            entry = self._live.get(id(s))
            if entry is None:
                if s.usable():
                    self._requeue(s)
            elif not s.usable() or (entry[0], entry[1]) != self._key(s):
                self._requeue(s)

    def _top(self) -> ServerState | None:
        """The valid top of the heap, discarding stale entries on the way."""
        heap = self._heap
        live = self._live
        while heap:
            entry = heap[0]
            busy, ratio, _, s = entry
            # Equality, not identity: the sequence number makes every entry unique, and mypyc
            # boxes a tuple anew each time it enters a list or dict (see setup.py).
            if live.get(id(s)) != entry:
                heappop(heap)  # superseded by a later entry for the same server
            elif not s.usable() or (busy, ratio) != self._key(s):
                heappop(heap)  # a missed event: requeue as it is now
                self._requeue(s)
            else:
                return s
        return None
