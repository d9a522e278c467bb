"""`source`, `uri`, `hdr(NAME)`, `cookie(NAME)` with `hash_type: consistent` (HAProxy's lb_chash).

A hash ring: every usable server owns points on a 64-bit circle, about 100 per unit of weight.
Point i of server NAME is word i % 8 of BLAKE2b-512(b"NAME#<i // 8>"): it depends on the name
and weight only, so it is the same in every worker and after a restart. A key belongs to the
first point at or after `hash64(key)`, wrapping around. Removing one of N servers moves only the
keys it owned (≈1/N) and adding it back returns exactly those; raising a weight adds points and
moves keys only to that server. No key (`key is None`) falls back to round-robin.

Points per weight unit: 100 for the smallest weight step (weights are divided by the gcd of the
configured weights, so `weight: 100` everywhere is 100 points each, not 10,000), fewer when the
ring would exceed 2^18 points (a 200,000-point ring takes about 10 MB).

Bounded loads (`hash_balance_factor`, Mirrokni, Thorup and Zadimoghaddam, arXiv:1608.01350, as
HAProxy implements it): a server may take a request only while its in-flight count is below its
share of `ceil((total in flight + 1) × factor / 100)` slots, shared by weight; else the walk goes
on clockwise. The slots add up to more than the requests in flight, so a server with room always
exists, and none ends above factor% of the average + 1: a hot key spills over to its neighbours
instead of melting one server.

Cost of a pick: the hash (≈0.5 µs) and an O(1) expected lookup. The top bits of the hash index
a table of ring offsets (one bucket per ~4 points with every server up) and the bisect runs
inside that bucket only: a plain bisect of a 200,000-point ring is 18 probes scattered over
megabytes, 3.5x slower than on 2,000 points. A walk past `avoid`, unusable or full servers visits
a few more points. Each ring value is `point << bits | position`: one list of ints holds both
point and owner.

Events: `server_changed` cuts or splices one server's points with list slices (O(ring) memory
copies in C, O(its points) Python steps) and re-sums the bucket table from per-bucket counts;
`servers_changed` rebuilds from the cached points. Missed events heal: a server met on the walk
that is no longer usable triggers a rebuild, and every pick re-checks one server in turn (its
points, and its in-flight count for the bound).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from itertools import accumulate, repeat
from math import gcd
from operator import rshift
from typing import Final

from lbd.balancing.hashing import hash64, hash64x8
from lbd.balancing.roundrobin import RoundRobin
from lbd.state import WEIGHT_SCALE, ServerState

POINTS_PER_WEIGHT: Final = 100
MAX_POINTS: Final = 1 << 18


class ConsistentHash:
    __slots__ = (
        "_bits",
        "_buckets",
        "_counts",
        "_cursor",
        "_factor",
        "_fallback",
        "_mask",
        "_on_ring",
        "_pending",
        "_points",
        "_position",
        "_ring",
        "_seen",
        "_served",
        "_servers",
        "_shift",
        "_stale",
        "_total_weight",
        "_unit",
        "_value_shift",
    )

    def __init__(self, servers: list[ServerState], balance_factor: int = 0) -> None:
        self._servers = servers
        self._factor = balance_factor  # 0: unbounded; else percent of the average load
        self._position = {id(s): i for i, s in enumerate(servers)}
        self._bits = max(16, len(servers).bit_length())
        self._mask = (1 << self._bits) - 1
        configured = [s.config.weight * WEIGHT_SCALE for s in servers if s.config.weight > 0]
        step = 0
        for w in configured:
            step = gcd(step, w)
        units = sum(configured) // step if step else 0
        self._unit = POINTS_PER_WEIGHT / step if step else float(POINTS_PER_WEIGHT)
        if units * POINTS_PER_WEIGHT > MAX_POINTS:
            self._unit = MAX_POINTS / sum(configured)
        self._points: dict[int, list[int]] = {}  # position → its ring values, generation order
        self._on_ring: dict[int, int] = {}  # position → how many points it has on the ring
        self._ring: list[int] = []
        # The bucket table: 2^k buckets over the hash space, k fixed so that with every server
        # up a bucket holds about 4 points. A key's bucket is `hash >> shift`, a ring value's
        # `value >> value_shift`; buckets[b] is the ring index where bucket b starts.
        expected = sum(max(1, round(w * self._unit)) for w in configured)
        k = min(max(expected.bit_length() - 2, 0), 20)
        self._shift = 64 - k
        self._value_shift = self._shift + self._bits
        self._counts = [0] * (1 << k)  # points per bucket
        self._buckets = [0] * ((1 << k) + 1)
        self._total_weight = 0  # of the servers on the ring
        self._stale = False  # a server on the ring was found unusable: rebuild at next pick
        self._fallback = RoundRobin(servers)
        # Bounded loads: the sum of `inflight` over all servers, kept from the events.
        self._seen = [max(s.inflight, 0) for s in servers]
        self._served = sum(self._seen)
        self._pending: list[ServerState] = []
        self._cursor = 0  # the server the next pick re-checks
        self.servers_changed()

    def _count(self, server: ServerState) -> int:
        """Points a server should have now: 0 when it may not take traffic."""
        if not server.usable() or server.eweight <= 0:
            return 0
        return max(1, round(server.eweight * self._unit))

    def _points_of(self, position: int, count: int) -> list[int]:
        """The first `count` ring values of a server, cached; a weight change extends the list."""
        points = self._points.setdefault(position, [])
        if len(points) < count:
            name = self._servers[position].name.encode()
            bits = self._bits
            del points[len(points) & ~7 :]  # redo a partial block of eight
            for block in range(len(points) >> 3, (count + 7) >> 3):
                points.extend((h << bits) | position for h in hash64x8(b"%s#%d" % (name, block)))
        return points[:count]

    # --- events ------------------------------------------------------------------------------

    def servers_changed(self) -> None:
        """O(ring · log n): rebuild the ring from every usable server's cached points."""
        ring: list[int] = []
        self._on_ring = {}
        self._total_weight = 0
        for i, s in enumerate(self._servers):
            count = self._count(s)
            if count:
                ring += self._points_of(i, count)
                self._on_ring[i] = count
                self._total_weight += s.eweight
        ring.sort()
        self._ring = ring
        per_bucket = Counter(map(rshift, ring, repeat(self._value_shift)))
        self._counts = [per_bucket[b] for b in range(len(self._counts))]
        self._buckets = [0, *accumulate(self._counts)]
        self._stale = False
        self._fallback.servers_changed()

    def server_changed(self, server: ServerState) -> None:
        """Move one server's points: O(ring) in C, no rehashing of the others."""
        i = self._position[id(server)]
        count = self._count(server)
        if self._on_ring.get(i, 0) == count:
            self._fallback.servers_changed()
            return
        counts = self._counts
        shift = self._value_shift
        if i in self._on_ring:
            points = sorted(self._points_of(i, self._on_ring.pop(i)))
            self._ring = _cut(self._ring, points)
            for v in points:
                counts[v >> shift] -= 1
        if count:
            points = sorted(self._points_of(i, count))
            self._ring = _splice(self._ring, points)
            for v in points:
                counts[v >> shift] += 1
            self._on_ring[i] = count
        self._buckets = [0, *accumulate(counts)]
        self._total_weight = sum(self._servers[p].eweight for p in self._on_ring)
        self._fallback.servers_changed()

    def request_started(self, server: ServerState) -> None:
        if self._factor:
            self._pending.append(server)

    def request_finished(self, server: ServerState, seconds: float) -> None:
        if self._factor:
            self._pending.append(server)

    # --- picking -----------------------------------------------------------------------------

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        if self._stale:
            self.servers_changed()
        if self._pending:
            self._sync_load()
        self._scrub()
        if key is None:
            return self._fallback.pick(None, avoid)
        ring = self._ring
        n = len(ring)
        if not n:
            return None
        h = hash64(key)
        b = h >> self._shift
        i = bisect_left(ring, h << self._bits, self._buckets[b], self._buckets[b + 1])
        servers = self._servers
        mask = self._mask
        factor = self._factor
        spill: ServerState | None = None  # the first usable server met, if all are full
        seen: set[int] | None = None  # positions met, once the walk passes a first server
        for step in range(n):
            j = i + step
            position = ring[j - n if j >= n else j] & mask
            s = servers[position]
            if s is avoid:
                pass
            elif not s.usable():
                self._stale = True  # a missed event; rebuild before the next pick
            elif not factor or self._has_slot(s):
                return s
            elif spill is None:
                spill = s
            if seen is None:
                seen = set()
            seen.add(position)
            if len(seen) == len(self._on_ring):
                break  # every server on the ring was met
        return spill

    def _scrub(self) -> None:
        """Re-check one server (in turn): its points on the ring, its share of the load."""
        servers = self._servers
        if servers:
            i = self._cursor
            self._cursor = i + 1 if i + 1 < len(servers) else 0
            s = servers[i]
            if self._count(s) != self._on_ring.get(i, 0):
                self.server_changed(s)
            if self._factor:
                now = s.inflight if s.inflight > 0 else 0
                self._served += now - self._seen[i]
                self._seen[i] = now

    def _sync_load(self) -> None:
        """Fold the in-flight changes of the servers named by events into the total."""
        pending, self._pending = self._pending, []
        seen = self._seen
        position = self._position
        for s in pending:
            i = position[id(s)]
            now = s.inflight if s.inflight > 0 else 0
            self._served += now - seen[i]
            seen[i] = now

    def _has_slot(self, server: ServerState) -> bool:
        """HAProxy's chash_server_is_eligible: the server's weighted share of the slots."""
        slots = -(-(self._served + 1) * self._factor // 100)  # ceil, for this request too
        total = self._total_weight
        share = -(-slots * server.eweight // total)  # ceil: the shares add up to >= slots
        return server.inflight < max(share, 1)


def _cut(ring: list[int], points: list[int]) -> list[int]:
    """`ring` without `points` (sorted, all on the ring): slices between them, copied in C."""
    out: list[int] = []
    start = 0
    for v in points:
        j = bisect_left(ring, v, start)
        out += ring[start:j]
        start = j + 1
    out += ring[start:]
    return out


def _splice(ring: list[int], points: list[int]) -> list[int]:
    """`ring` with `points` (sorted, none on the ring) merged in at their places."""
    out: list[int] = []
    start = 0
    for v in points:
        j = bisect_left(ring, v, start)
        out += ring[start:j]
        out.append(v)
        start = j
    out += ring[start:]
    return out
