"""`first`: fill servers in declared order, each up to its `maxconn` (HAProxy's `first`).

The first usable server with a free slot (`inflight < maxconn`; `maxconn: 0` is unlimited, so
that server takes everything) gets the request; the others stay idle and can be powered down.
When every usable server is full, `pick` returns None: HAProxy queues the request then (up to
`timeouts.queue`), it does not overflow past `maxconn`.

Structure: a min-heap of the declared positions of the servers that have room, with lazy
deletion (`_room` says which entries are live). `pick` reads the top, O(1) plus discarded
entries; an event moves one server in or out, O(log n). Events are applied at the next `pick`
from `server.inflight` (see base.py). Missed events heal: the top is checked against the live
count before it is returned, and every pick re-checks one more server in turn, so a server that
got room back without an event (requests finished on the previous runtime after a reload, a
missed up event) is back within n picks.
"""

from __future__ import annotations

from heapq import heappop, heappush

from lbd.state import ServerState


def _has_room(server: ServerState) -> bool:
    maxconn = server.config.maxconn
    return server.usable() and (maxconn == 0 or server.inflight < maxconn)


class First:
    __slots__ = ("_cursor", "_heap", "_pending", "_position", "_room", "_servers")

    def __init__(self, servers: list[ServerState]) -> None:
        self._servers = servers
        self._position = {id(s): i for i, s in enumerate(servers)}
        self._heap: list[int] = []  # declared positions; may hold stale or duplicate entries
        self._room: set[int] = set()  # positions of the servers that have room (live entries)
        self._pending: list[ServerState] = []
        self._cursor = 0  # the server the next pick re-checks
        self.servers_changed()

    def _update(self, server: ServerState) -> None:
        """Move one server in or out of the heap: O(log n)."""
        i = self._position[id(server)]
        if _has_room(server):
            if i not in self._room:
                self._room.add(i)
                heappush(self._heap, i)
                if len(self._heap) > 2 * len(self._servers) + 16:
                    self._heap[:] = sorted(self._room)  # a sorted list is a heap
        else:
            self._room.discard(i)

    # --- events ------------------------------------------------------------------------------

    def servers_changed(self) -> None:
        self._room = {i for i, s in enumerate(self._servers) if _has_room(s)}
        self._heap = sorted(self._room)
        self._pending = []

    def server_changed(self, server: ServerState) -> None:
        self._update(server)

    def request_started(self, server: ServerState) -> None:
        self._pending.append(server)

    def request_finished(self, server: ServerState, seconds: float) -> None:
        self._pending.append(server)

    # --- picking -----------------------------------------------------------------------------

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        if self._pending:
            pending, self._pending = self._pending, []
            for s in pending:
                self._update(s)
        if self._servers:
            i = self._cursor
            self._cursor = i + 1 if i + 1 < len(self._servers) else 0
            self._update(self._servers[i])
        best = self._top()
        if best is None or best is not avoid:
            return best
        # Set every copy of the avoided position aside, take the next, put one copy back.
        heap = self._heap
        aside = heap[0]
        while heap and heap[0] == aside:
            heappop(heap)
        second = self._top()
        heappush(heap, aside)
        return second

    def _top(self) -> ServerState | None:
        heap = self._heap
        while heap:
            i = heap[0]
            if i not in self._room:
                heappop(heap)  # stale: the server left the heap since
                continue
            s = self._servers[i]
            if _has_room(s):
                return s
            heappop(heap)  # full or unusable without an event
            self._room.discard(i)
        return None
