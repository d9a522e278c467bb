"""Balancing algorithms: exact sequences, distributions, events, and the cost of a pick.

Pure: real ServerState objects over a dummy pool, no network, no event loop; time and
randomness are injected. Style 3 of STYLE.md (exact-distribution tests for algorithms).
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast, get_args

import pytest
from source_only import run_json

from lbd.balancing.base import Balancer
from lbd.balancing.chash import ConsistentHash
from lbd.balancing.ewma import Ewma
from lbd.balancing.first import First
from lbd.balancing.hashing import hash64
from lbd.balancing.keys import cookie_key, header_key, key_extractor, source_key, uri_key
from lbd.balancing.leastconn import LeastConn
from lbd.balancing.maphash import MapHash
from lbd.balancing.random_draws import RandomDraws
from lbd.balancing.registry import implemented, make_balancer
from lbd.balancing.roundrobin import RoundRobin
from lbd.balancing.staticrr import StaticRoundRobin
from lbd.config.schema import Address, Algorithm, Balance, Server
from lbd.http.head import RequestHead, split_target
from lbd.proxy.connpool import idle_pool
from lbd.state import ServerState

NAMES = "abcdefghijklmnopqrstuvwxyz"


def farm(
    *weights: int, maxconn: Sequence[int] = (), names: Sequence[str] = ()
) -> list[ServerState]:
    servers = []
    for i, w in enumerate(weights):
        name = names[i] if names else (NAMES[i] if i < len(NAMES) else f"s{i}")
        cfg = Server(
            name=name,
            address=Address("127.0.0.1", 9000 + i),
            weight=w,
            maxconn=maxconn[i] if maxconn else 0,
        )
        servers.append(ServerState("app", cfg, idle_pool(cfg.address)))
    return servers


def names(picks: Sequence[ServerState | None]) -> str:
    return " ".join(s.name if s is not None else "-" for s in picks)


def run(b: Balancer, n: int, key: bytes | None = None) -> list[ServerState | None]:
    return [b.pick(key, None) for _ in range(n)]


def nginx_swrr(weights: Sequence[int], n: int) -> list[int]:
    """nginx's smooth weighted round-robin, O(n) per pick: the reference order."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(n):
        best = -1
        for i, w in enumerate(weights):
            current[i] += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


# --- roundrobin -------------------------------------------------------------------------------


def test_roundrobin_smooth_order_5_1_1() -> None:
    rr = RoundRobin(farm(5, 1, 1))
    assert names(run(rr, 14)) == "a a b a c a a a a b a c a a"


def test_roundrobin_equal_weights_take_turns() -> None:
    rr = RoundRobin(farm(1, 1, 1))
    assert names(run(rr, 7)) == "a b c a b c a"


@pytest.mark.parametrize("seed", range(5))
def test_roundrobin_is_exactly_nginx_order(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        weights = [rng.choice([1, 1, 2, 3, 5, 8, 10, 100, 256]) for _ in range(rng.randint(1, 9))]
        servers = farm(*weights)
        rr = RoundRobin(servers)
        n = 2 * sum(weights) + 5
        got = [servers.index(s) for s in run(rr, n) if s is not None]
        assert got == nginx_swrr(weights, n), weights


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2, 1), (10, 7, 3, 1), (256, 1)])
def test_roundrobin_distribution_within_1_percent(weights: tuple[int, ...]) -> None:
    rr = RoundRobin(farm(*weights))
    counts = Counter(s.name for s in run(rr, 7000) if s is not None)
    total = sum(weights)
    for i, w in enumerate(weights):
        expected = 7000 * w / total
        assert abs(counts[NAMES[i]] - expected) <= 0.01 * 7000, (counts, weights)


def test_roundrobin_weight_change_at_runtime() -> None:
    servers = farm(1, 1, 1)
    b = servers[1]
    rr = RoundRobin(servers)
    assert names(run(rr, 3)) == "a b c"
    b.set_weight(5)
    rr.server_changed(b)
    assert names(run(rr, 7)) == "b b a b c b b"
    b.set_weight(0)  # weight 0: out of rotation (usable() is False)
    rr.server_changed(b)
    assert names(run(rr, 4)) == "a c a c"


def test_roundrobin_skips_unusable_and_avoid() -> None:
    servers = farm(5, 1, 1)
    a, b, c = servers
    rr = RoundRobin(servers)
    # avoid: never returned, and the others keep their order.
    assert all(rr.pick(None, a) is not a for _ in range(50))
    rr.servers_changed()
    assert names([rr.pick(None, a) for _ in range(4)]) == "b c b c"
    # A server that went down with the event...
    b.up = False
    rr.server_changed(b)
    assert "b" not in names(run(rr, 20))
    # ...and one whose event was missed: found when met, skipped, never returned.
    c.admin = "maint"
    assert names(run(rr, 6)) == "a a a a a a"
    # The only usable server is the one to avoid: None, the caller then takes it anyway.
    assert rr.pick(None, a) is None
    a.up = False
    rr.servers_changed()
    assert rr.pick(None, None) is None


def test_roundrobin_down_and_back_up() -> None:
    servers = farm(1, 1, 1)
    rr = RoundRobin(servers)
    servers[1].up = False
    rr.server_changed(servers[1])
    assert names(run(rr, 4)) == "a c a c"
    servers[1].up = True
    rr.server_changed(servers[1])
    assert names(run(rr, 3)) == "a b c"


def test_static_rr_ignores_runtime_weight() -> None:
    servers = farm(2, 1)
    b = servers[1]
    srr = StaticRoundRobin(servers)
    before = names(run(srr, 6))
    b.set_weight(50)
    srr.server_changed(b)
    assert names(run(srr, 6)) == before == "a b a a b a"
    b.up = False  # but up/down still counts
    srr.server_changed(b)
    assert names(run(srr, 3)) == "a a a"


# --- leastconn --------------------------------------------------------------------------------


def start(b: Balancer, s: ServerState | None) -> ServerState:
    """What the exchange does after a pick: count the request, then tell the balancer."""
    assert s is not None
    s.inflight += 1
    b.request_started(s)
    return s


def finish(b: Balancer, s: ServerState, seconds: float = 0.01) -> None:
    s.inflight -= 1
    b.request_finished(s, seconds)


def test_leastconn_prefers_idle_servers() -> None:
    servers = farm(10, 1, 1)
    lc = LeastConn(servers)
    start(lc, lc.pick(None, None))  # a (heaviest idle: ratio 1/10)
    # a is busy with (1+1)/10 = 0.2, better than an idle weight-1 server's 1.0, but idle wins.
    assert {start(lc, lc.pick(None, None)).name for _ in range(2)} == {"b", "c"}
    # All busy: now the ratio decides, and the heavy server takes the next ones.
    assert names([start(lc, lc.pick(None, None)) for _ in range(3)]) == "a a a"


def test_leastconn_rotates_among_equals() -> None:
    servers = farm(1, 1, 1)
    lc = LeastConn(servers)
    seq = []
    for _ in range(7):  # one request at a time: every server is always idle again
        s = start(lc, lc.pick(None, None))
        seq.append(s)
        finish(lc, s)
    assert names(seq) == "a b c a b c a"


def test_leastconn_follows_load_and_weight() -> None:
    servers = farm(3, 1)
    a = servers[0]
    lc = LeastConn(servers)
    held = [start(lc, lc.pick(None, None)) for _ in range(40)]
    counts = Counter(s.name for s in held)
    assert counts == {"a": 30, "b": 10}  # in flight in proportion to weight
    for s in held[:20]:
        if s is a:
            finish(lc, s)
    assert lc.pick(None, None) is a


def test_leastconn_event_order_does_not_matter() -> None:
    servers = farm(1, 1)
    a = servers[0]
    lc = LeastConn(servers)
    s = lc.pick(None, None)
    assert s is a
    start(lc, s)
    # request_finished sent *before* the caller decrements inflight (the event says who,
    # `inflight` says how much): a is idle again at the next pick.
    lc.request_finished(a, 0.01)
    a.inflight -= 1
    start(lc, lc.pick(None, None))  # b, behind which a was requeued
    assert lc.pick(None, None) is a


def test_leastconn_avoid_unusable_and_missed_events() -> None:
    servers = farm(1, 1, 1)
    a, b, c = servers
    lc = LeastConn(servers)
    assert lc.pick(None, a) is b
    b.up = False  # no event
    assert lc.pick(None, a) is c
    b.up = True
    lc.server_changed(b)
    a.inflight = 5  # load changed without an event: corrected when a surfaces
    assert {lc.pick(None, None).name for _ in range(3)} <= {"b", "c"}  # type: ignore[union-attr]
    c.up = False
    lc.server_changed(c)
    assert lc.pick(None, b) is a  # only a remains once b is avoided
    a.up = False
    lc.server_changed(a)
    assert lc.pick(None, b) is None


def test_leastconn_heap_stays_bounded() -> None:
    servers = farm(*[1] * 10)
    lc = LeastConn(servers)
    for _ in range(10_000):
        finish(lc, start(lc, lc.pick(None, None)))
    assert len(lc._heap) <= 2 * len(servers) + 16


# --- first ------------------------------------------------------------------------------------


def test_first_fills_in_declared_order_up_to_maxconn() -> None:
    servers = farm(1, 1, 1, maxconn=[2, 3, 0])
    a, b, _ = servers
    fs = First(servers)
    held = [start(fs, fs.pick(None, None)) for _ in range(8)]
    assert names(held) == "a a b b b c c c"
    finish(fs, held[3])  # b has a free slot again: it comes before c
    assert fs.pick(None, None) is b
    finish(fs, held[0])  # and a before b
    assert fs.pick(None, None) is a
    assert fs.pick(None, a) is b


def test_first_unlimited_and_all_full() -> None:
    servers = farm(1, 1, maxconn=[0, 0])
    fs = First(servers)
    assert names([start(fs, fs.pick(None, None)) for _ in range(5)]) == "a a a a a"
    servers = farm(1, 1, maxconn=[1, 1])
    fs = First(servers)
    start(fs, fs.pick(None, None))
    start(fs, fs.pick(None, None))
    assert fs.pick(None, None) is None  # every slot taken: the caller queues (HAProxy) or 503s


def test_first_skips_down_servers_and_missed_events() -> None:
    servers = farm(1, 1, 1, maxconn=[1, 1, 1])
    a, b, c = servers
    fs = First(servers)
    a.up = False
    fs.server_changed(a)
    assert fs.pick(None, None) is b
    b.inflight = 1  # no event: found full when it surfaces
    assert fs.pick(None, None) is c
    a.up = True
    fs.server_changed(a)
    assert fs.pick(None, None) is a


# --- hashing ----------------------------------------------------------------------------------


def keys(n: int, prefix: str = "10.1.") -> list[bytes]:
    return [f"{prefix}{i // 256}.{i % 256}".encode() for i in range(n)]


def hashers(servers: list[ServerState]) -> list[Balancer]:
    return [MapHash(servers), ConsistentHash(servers)]


def test_hash64_is_stable() -> None:
    # Pinned: the same in every worker, after a restart and after an upgrade (Python's hash()
    # differs per process); changing it would send every client to another server.
    assert hash64(b"10.0.0.1") == 0x538EF646E14D03E6
    assert hash64(b"") != hash64(b"\x00")
    code = "from lbd.balancing.hashing import hash64; print(hash64(b'10.0.0.1'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert int(other.stdout) == 0x538EF646E14D03E6


@pytest.mark.parametrize("kind", ["map-based", "consistent"])
def test_hash_stable_per_key_and_even(kind: str) -> None:
    servers = farm(1, 1, 1, 1, 1)
    b = make_balancer(Balance(algorithm="source", hash_type=kind), servers)  # type: ignore[arg-type]
    ks = keys(10_000)
    first = [b.pick(k, None) for k in ks]
    again = [b.pick(k, None) for k in ks]
    assert first == again
    rebuilt = make_balancer(Balance(algorithm="source", hash_type=kind), servers)  # type: ignore[arg-type]
    assert [rebuilt.pick(k, None) for k in ks] == first  # another worker, same answers
    counts = Counter(s.name for s in first if s is not None)
    assert len(counts) == 5
    # Map-based is as even as the hash; a ring with ~100 points per server within ±25%.
    bound = 1.15 if kind == "map-based" else 1.6
    assert max(counts.values()) / min(counts.values()) < bound, counts


@pytest.mark.parametrize("kind", ["map-based", "consistent"])
def test_hash_follows_weights(kind: str) -> None:
    servers = farm(3, 1)
    b = make_balancer(Balance(algorithm="uri", hash_type=kind), servers)  # type: ignore[arg-type]
    counts = Counter(s.name for s in (b.pick(k, None) for k in keys(10_000)) if s is not None)
    assert 0.65 < counts["a"] / 10_000 < 0.85, counts


def reference_ring(servers: list[ServerState]) -> list[tuple[int, ServerState]]:
    """The ring as the chash banner specifies it, built by brute force: 100 points per unit of
    weight, point i of NAME = word i % 8 of BLAKE2b-512(b"NAME#<i // 8>")."""
    points = []
    for s in servers:
        if s.usable():
            for i in range(100 * s.weight):
                digest = hashlib.blake2b(b"%s#%d" % (s.name.encode(), i // 8)).digest()
                points.append((struct.unpack(">8Q", digest)[i % 8], s))
    return sorted(points, key=lambda p: p[0])


def reference_owner(ring: list[tuple[int, ServerState]], key: bytes) -> ServerState:
    """The first point at or after the key's hash, wrapping around: a linear scan."""
    h = hash64(key)
    return next((s for p, s in ring if p >= h), ring[0][1])


def test_consistent_hash_matches_the_specified_ring() -> None:
    servers = farm(1, 2, 1, 3, names=["app1", "app2", "app3", "app4"])
    ch = ConsistentHash(servers)
    ring = reference_ring(servers)
    last = ring[-1][0]
    wrapping = next(k for k in (b"w%d" % i for i in range(100_000)) if hash64(k) > last)
    ks = [*keys(2_000), b"", wrapping]
    assert [ch.pick(k, None) for k in ks] == [reference_owner(ring, k) for k in ks]
    assert ch.pick(wrapping, None) is ring[0][1]
    servers[1].up = False
    ch.server_changed(servers[1])
    ring = reference_ring(servers)
    assert [ch.pick(k, None) for k in ks] == [reference_owner(ring, k) for k in ks]


@pytest.mark.parametrize("n", [4, 10])
def test_consistent_hash_moves_one_nth_when_a_server_leaves(n: int) -> None:
    servers = farm(*[1] * n)
    ch = ConsistentHash(servers)
    ks = keys(10_000)
    before = [ch.pick(k, None) for k in ks]
    gone = servers[n // 2]
    gone.up = False
    ch.server_changed(gone)
    after = [ch.pick(k, None) for k in ks]
    moved = sum(x is not y for x, y in zip(before, after, strict=True))
    assert moved <= (1 / n + 0.05) * len(ks), moved
    # Only the keys of the server that left moved, and they come back with it.
    assert all(x is y for x, y in zip(before, after, strict=True) if x is not gone)
    gone.up = True
    ch.server_changed(gone)
    assert [ch.pick(k, None) for k in ks] == before
    ch.servers_changed()  # a full rebuild gives the same ring
    assert [ch.pick(k, None) for k in ks] == before


def test_consistent_hash_weight_increase_moves_keys_only_to_that_server() -> None:
    servers = farm(1, 1, 1, 1)
    ch = ConsistentHash(servers)
    ks = keys(5_000)
    before = [ch.pick(k, None) for k in ks]
    servers[0].set_weight(2)
    ch.server_changed(servers[0])
    after = [ch.pick(k, None) for k in ks]
    assert all(y is x or y is servers[0] for x, y in zip(before, after, strict=True))
    share = sum(s is servers[0] for s in after) / len(ks)
    assert 0.3 < share < 0.5  # 2/5 of the weight


def test_map_based_avoid_takes_the_next_server() -> None:
    servers = farm(1, 1, 1)
    mh = MapHash(servers)
    for k in keys(200):
        s = mh.pick(k, None)
        other = mh.pick(k, s)
        assert other is not None and other is not s
    for s in servers[1:]:
        s.up = False
        mh.server_changed(s)
    assert mh.pick(b"k", servers[0]) is None


def test_consistent_avoid_and_missed_down_event() -> None:
    servers = farm(1, 1, 1)
    ch = ConsistentHash(servers)
    ks = keys(300)
    owners = [ch.pick(k, None) for k in ks]
    for k, s in zip(ks, owners, strict=True):
        other = ch.pick(k, s)
        assert other is not None and other is not s
    b = servers[1]
    b.up = False  # no event: skipped when met, ring rebuilt at the next pick
    assert all(ch.pick(k, None) is not b for k in ks)
    assert b not in {ch.pick(k, None) for k in ks}


@pytest.mark.parametrize("factor", [125, 150, 200])
def test_bounded_load_holds_under_a_skewed_key_set(factor: int) -> None:
    servers = farm(*[1] * 8)
    ch = ConsistentHash(servers, balance_factor=factor)
    rng = random.Random(7)
    hot = [b"patient-1", b"patient-2"]
    held: list[ServerState] = []
    for i in range(4_000):
        key = rng.choice(hot) if rng.random() < 0.8 else f"k{i}".encode()
        s = start(ch, ch.pick(key, None))
        held.append(s)
        if len(held) > 200:  # ~200 requests in flight, the oldest finishes first
            finish(ch, held.pop(0))
        average = sum(x.inflight for x in servers) / len(servers)
        assert max(x.inflight for x in servers) <= factor / 100 * average + 1
    # Without the bound the hot keys' servers would hold ~80% of the requests.
    unbounded = ConsistentHash(servers)
    assert Counter(unbounded.pick(k, None) for k in hot * 100).most_common(1)[0][1] >= 100


@pytest.mark.parametrize("algorithm", ["source", "uri", "hdr", "cookie"])
@pytest.mark.parametrize("kind", ["map-based", "consistent"])
def test_missing_key_falls_back_to_roundrobin(algorithm: str, kind: str) -> None:
    cfg = Balance(algorithm=algorithm, arg="X-Id", hash_type=kind)  # type: ignore[arg-type]
    b = make_balancer(cfg, farm(5, 1, 1))
    assert names(run(b, 7, key=None)) == "a a b a c a a"


# --- random (power of d choices) --------------------------------------------------------------


def test_random_two_draws_prefer_the_less_loaded() -> None:
    servers = farm(1, 1, 1, 1)
    rd = RandomDraws(servers, draws=2, rng=random.Random(1))
    servers[0].inflight = 10
    counts = Counter(s.name for s in run(rd, 4_000) if s is not None)
    # Distinct draws: the loaded server wins only against ... nobody.
    assert counts["a"] == 0
    assert all(900 < counts[n] < 1_800 for n in "bcd"), counts
    servers[0].inflight = 0
    counts = Counter(s.name for s in run(rd, 4_000) if s is not None)
    assert counts["a"] > 600  # back in play once idle


def test_random_follows_weights_and_avoid() -> None:
    servers = farm(3, 1)
    rd = RandomDraws(servers, draws=1, rng=random.Random(2))
    counts = Counter(s.name for s in run(rd, 8_000) if s is not None)
    assert 0.72 < counts["a"] / 8_000 < 0.78
    assert all(rd.pick(None, servers[0]) is servers[1] for _ in range(50))
    servers[1].up = False  # missed event
    assert rd.pick(None, servers[0]) is None
    assert rd.pick(None, None) is servers[0]


def test_random_least_loaded_with_concurrency() -> None:
    servers = farm(*[1] * 10)
    rd = RandomDraws(servers, draws=2, rng=random.Random(3))
    held = [start(rd, rd.pick(None, None)) for _ in range(1_000)]
    loads = [s.inflight for s in servers]
    assert max(loads) - min(loads) <= 6, loads  # vs ~±30 for one random draw
    assert len(held) == 1_000


# --- ewma -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    b: Balancer,
    clock: FakeClock,
    latency: Callable[[str, float], float],
    until: float,
    rate: float = 100.0,
) -> list[tuple[float, str]]:
    """Requests arrive every 1/rate s; each finishes after its server's latency at that time."""
    done: list[tuple[float, int, ServerState, float]] = []
    picks: list[tuple[float, str]] = []
    seq = 0
    t = clock.now
    while t < until:
        while done and done[0][0] <= t:
            end, _, s, began = heapq.heappop(done)
            clock.now = end
            finish(b, s, end - began)
        clock.now = t
        s = start(b, b.pick(None, None))
        picks.append((t, s.name))
        seq += 1
        heapq.heappush(done, (t + latency(s.name, t), seq, s, t))
        t += 1.0 / rate
    return picks


def share(picks: list[tuple[float, str]], name: str, t0: float, t1: float) -> float:
    window = [n for t, n in picks if t0 <= t < t1]
    return sum(n == name for n in window) / len(window)


def test_ewma_moves_traffic_away_from_a_slow_server_and_back() -> None:
    servers = farm(1, 1, 1)
    clock = FakeClock()
    ew = Ewma(servers, rng=random.Random(4), clock=clock)

    def latency(name: str, t: float) -> float:
        return 0.8 if name == "c" and 20.0 <= t < 40.0 else 0.02

    picks = simulate(ew, clock, latency, until=120.0)
    assert 0.2 < share(picks, "c", 10, 20) < 0.45  # healthy: about a third
    assert share(picks, "c", 21, 24) < 0.05  # slow: most traffic gone within a second or so
    assert share(picks, "c", 24, 40) < 0.02
    assert share(picks, "c", 90, 120) > 0.2  # recovered: back to about a third


def test_ewma_cost_decays_and_new_servers_are_probed_one_at_a_time() -> None:
    servers = farm(1, 1)
    a, b = servers
    clock = FakeClock()
    ew = Ewma(servers, rng=random.Random(5), clock=clock, decay=10.0)  # τ = 10 s for round numbers
    assert ew.latency(a, 0.0) is None
    ew.request_finished(a, 1.0)
    assert ew.latency(a, 0.0) == 1.0
    assert ew.latency(a, 10.0) == pytest.approx(1.0 * 2.718281828**-1)
    clock.now = 10.0
    ew.request_finished(a, 0.1)  # below: the estimate moves toward it by 1 - e^(-10 s / 10 s)
    w = 2.718281828**-1
    assert ew.latency(a, 10.0) == pytest.approx(1.0 * w + 0.1 * (1 - w))
    for _ in range(60):  # one sample a second for 6 τ
        clock.now += 1.0
        ew.request_finished(a, 0.1)
    assert ew.latency(a, clock.now) == pytest.approx(0.1, rel=0.05)  # ... and converges to it
    ew.request_finished(a, 5.0)  # peak: replaces at once
    clock.now = 10.0
    assert ew.latency(a, 10.0) == 5.0
    start(ew, b)  # b never answered yet and has a request in flight: not chosen
    assert all(ew.pick(None, None) is a for _ in range(20))


def test_ewma_weight_and_avoid() -> None:
    servers = farm(4, 1)
    a, b = servers
    clock = FakeClock()
    ew = Ewma(servers, rng=random.Random(6), clock=clock)
    ew.request_finished(a, 0.1)
    ew.request_finished(b, 0.1)
    assert all(ew.pick(None, None) is a for _ in range(10))  # same latency, 4x the weight
    assert all(ew.pick(None, a) is b for _ in range(10))


# --- registry and keys ------------------------------------------------------------------------


def test_registry_covers_every_algorithm() -> None:
    expected: dict[str, type] = {
        "roundrobin": RoundRobin,
        "static-rr": StaticRoundRobin,
        "leastconn": LeastConn,
        "first": First,
        "source": MapHash,
        "uri": MapHash,
        "hdr": MapHash,
        "cookie": MapHash,
        "random": RandomDraws,
        "ewma": Ewma,
    }
    assert set(get_args(Algorithm)) == set(expected)
    for algorithm, cls in expected.items():
        assert implemented(algorithm)
        b = make_balancer(Balance(algorithm=algorithm, arg="X"), farm(1, 1))  # type: ignore[arg-type]
        assert type(b) is cls
        assert b.pick(b"k", None) is not None
    ch = make_balancer(Balance(algorithm="hdr", arg="X", hash_type="consistent"), farm(1))
    assert type(ch) is ConsistentHash


def head(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    h = RequestHead(b"GET", target, b"1.1", headers or [])
    h.path, h.query = split_target(target)
    return h


def test_keys() -> None:
    h = head(
        b"/dmu/patient/42/notes?x=1",
        [(b"Host", b"ehr"), (b"X-Patient", b" 42 "), (b"Cookie", b"a=1; JSESSIONID=abc; b=2")],
    )
    assert source_key(h, b"10.0.0.7") == b"10.0.0.7"
    assert source_key(h, b"-") is None
    assert uri_key(h, whole=False, depth=0) == b"/dmu/patient/42/notes"
    assert uri_key(h, whole=True, depth=0) == b"/dmu/patient/42/notes?x=1"
    assert uri_key(h, whole=False, depth=1) == b"/dmu"
    assert uri_key(h, whole=False, depth=2) == b"/dmu/patient"
    assert uri_key(h, whole=False, depth=9) == b"/dmu/patient/42/notes"
    assert header_key(h, b"x-patient") == b"42"
    assert header_key(h, b"x-absent") is None
    assert cookie_key(h, b"JSESSIONID") == b"abc"
    assert cookie_key(h, b"jsessionid") is None  # cookie names are case-sensitive
    assert cookie_key(head(b"/"), b"JSESSIONID") is None

    def extract(cfg: Balance, h: RequestHead) -> bytes | None:
        f = key_extractor(cfg)
        assert f is not None
        return f(h, b"10.0.0.7")

    assert extract(Balance(algorithm="source"), h) == b"10.0.0.7"
    assert extract(Balance(algorithm="uri", uri_depth=2), h) == b"/dmu/patient"
    assert extract(Balance(algorithm="hdr", arg="X-PATIENT"), h) == b"42"
    assert extract(Balance(algorithm="cookie", arg="JSESSIONID"), h) == b"abc"
    assert key_extractor(Balance(algorithm="roundrobin")) is None
    assert key_extractor(Balance(algorithm="leastconn")) is None


# --- cost of a pick ---------------------------------------------------------------------------


# Counted on the sources in a subprocess: a compiled ServerState admits no Python subclass.
PICK_COST = """
import json, random
from test_balancing import FACTORIES, finish, start
from lbd.config.schema import Address, Server
from lbd.proxy.connpool import idle_pool
from lbd.state import ServerState


class CountingServer(ServerState):
    \"\"\"A ServerState that counts `usable()` calls: how many servers a pick looks at.\"\"\"

    __slots__ = ()
    looked = 0

    def usable(self):
        CountingServer.looked += 1
        return super().usable()


looked = {}
for name, factory in FACTORIES.items():
    servers = []
    for i in range(1_000):
        cfg = Server(name=f"s{i}", address=Address("127.0.0.1", 10_000 + i), weight=1 + i % 3)
        servers.append(CountingServer("app", cfg, idle_pool(cfg.address)))
    b = factory(servers)
    held = [start(b, b.pick(b"%d" % i, None)) for i in range(200)]  # warm up with some load
    CountingServer.looked = 0
    picks = 2_000
    for i in range(picks):
        finish(b, start(b, b.pick(b"k%d" % i, held[i % len(held)])))
    looked[name] = CountingServer.looked / picks
print(json.dumps(looked))
"""


FACTORIES: dict[str, Callable[[list[ServerState]], Any]] = {
    "roundrobin": RoundRobin,
    "static-rr": StaticRoundRobin,
    "leastconn": LeastConn,
    "first": First,
    "map-based": MapHash,
    "consistent": ConsistentHash,
    "bounded": lambda s: ConsistentHash(s, 150),
    "random": lambda s: RandomDraws(s, rng=random.Random(0)),
    "ewma": lambda s: Ewma(s, rng=random.Random(0)),
}


@pytest.fixture(scope="module")
def servers_looked_at_per_pick() -> dict[str, float]:
    return cast(dict[str, float], run_json(PICK_COST))


@pytest.mark.parametrize("name", FACTORIES)
def test_a_pick_does_not_scan_the_farm(
    name: str, servers_looked_at_per_pick: dict[str, float]
) -> None:
    # 1,000 servers with 200 requests held: a pick looks at a handful, never the farm.
    assert 0 < servers_looked_at_per_pick[name] < 12, servers_looked_at_per_pick[name]


# --- missed events heal -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FACTORIES)
def test_a_missed_up_event_heals_within_n_picks(name: str) -> None:
    servers = farm(1, 1, 1, 1, 1)
    servers[0].up = False
    b = FACTORIES[name](servers)
    servers[0].up = True  # the health event never reached the balancer
    picks = []
    for i in range(200):
        s = start(b, b.pick(b"key%d" % i, None))
        picks.append(s)
        finish(b, s)
    assert servers[0] in picks[len(servers) :]


@pytest.mark.parametrize("name", ["leastconn", "first", "bounded"])
def test_requests_finished_on_the_previous_runtime_do_not_starve_a_server(name: str) -> None:
    # After a reload the new balancer starts from the live counts; requests that were in flight
    # then finish on the old runtime and their events never reach the new balancer.
    servers = farm(1, 1, 1, maxconn=[10, 0, 0])
    a = servers[0]
    a.inflight = 10
    b = FACTORIES[name](servers)
    a.inflight = 0
    seen = []
    for i in range(10):
        s = start(b, b.pick(b"k%d" % i, None))
        seen.append(s)
        finish(b, s)
    assert a in seen


@pytest.mark.parametrize("name", ["random", "ewma"])
def test_two_servers_two_draws_share_ties(name: str) -> None:
    servers = farm(1, 1)
    b = FACTORIES[name](servers)
    seq = []
    for _ in range(1_000):  # one request at a time: both idle at every pick
        s = start(b, b.pick(None, None))
        seq.append(s.name)
        finish(b, s, 0.01)
    assert 400 < seq.count("a") < 600
