"""Picks per second of the balancing algorithms at 10 and at 1,000 servers.

    .venv/bin/python bench/pick_bench.py [--picks N] [--repeat R] [--all]

What one "pick" costs here is what the exchange pays per request: `pick` (with the hash of the
key for the hash algorithms), and for the load-aware ones the events around it (`inflight += 1`,
`request_started`, `inflight -= 1`, `request_finished`). Servers have weights 1, 2, 3 in turn
(three weight groups for round-robin). Best of R runs, interleaved between the two sizes. The
target: 1,000 servers no more than 2x slower than 10 (a pick must not scan the farm).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

from lbd.balancing.base import Balancer
from lbd.balancing.chash import ConsistentHash
from lbd.balancing.ewma import Ewma
from lbd.balancing.first import First
from lbd.balancing.leastconn import LeastConn
from lbd.balancing.maphash import MapHash
from lbd.balancing.random_draws import RandomDraws
from lbd.balancing.roundrobin import RoundRobin
from lbd.balancing.staticrr import StaticRoundRobin
from lbd.config.schema import Address, Server
from lbd.proxy.connpool import idle_pool
from lbd.state import ServerState


def farm(n: int) -> list[ServerState]:
    out = []
    for i in range(n):
        cfg = Server(name=f"srv{i}", address=Address("10.0.0.1", 10_000 + i), weight=1 + i % 3)
        out.append(ServerState("bench", cfg, idle_pool(cfg.address)))
    return out


def plain(b: Balancer, keys: list[bytes | None], picks: int) -> float:
    """Seconds for `picks` picks, no events (round-robin, hashes)."""
    n = len(keys)
    pick = b.pick
    t0 = time.perf_counter()
    for i in range(picks):
        pick(keys[i % n], None)
    return time.perf_counter() - t0


def with_events(b: Balancer, keys: list[bytes | None], picks: int) -> float:
    """Seconds for `picks` picks, each wrapped in the events the exchange sends."""
    n = len(keys)
    pick, started, finished = b.pick, b.request_started, b.request_finished
    t0 = time.perf_counter()
    for i in range(picks):
        s = pick(keys[i % n], None)
        assert s is not None
        s.inflight += 1
        started(s)
        s.inflight -= 1
        finished(s, 0.002)
    return time.perf_counter() - t0


Case = tuple[Callable[[list[ServerState]], Balancer], bool, bool]  # factory, keyed, events

CASES: dict[str, Case] = {
    "roundrobin": (RoundRobin, False, False),
    "leastconn": (LeastConn, False, True),
    "consistent hash": (ConsistentHash, True, False),
}
MORE: dict[str, Case] = {
    "static-rr": (StaticRoundRobin, False, False),
    "first": (First, False, True),
    "map-based hash": (MapHash, True, False),
    "consistent, bounded 150": (lambda s: ConsistentHash(s, 150), True, True),
    "random (2 draws)": (lambda s: RandomDraws(s, 2, random.Random(1)), False, False),
    "ewma": (lambda s: Ewma(s, 2, random.Random(1)), False, True),
}


def prepare(case: Case, servers: int) -> Callable[[int], float]:
    """A runner for `case` over a fresh farm: picks → seconds."""
    factory, keyed, events = case
    b = factory(farm(servers))
    keys: list[bytes | None] = (
        [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}".encode() for i in range(4096)]
        if keyed
        else [None]
    )
    run = with_events if events else plain
    return lambda picks: run(b, keys, picks)


def measure(case: Case, picks: int, repeat: int) -> tuple[float, float]:
    """Picks per second at 10 and at 1,000 servers, runs interleaved (10, 1,000, 10, …) so a
    noisy moment on a shared machine hits both sizes alike; best of `repeat` for each."""
    small, large = prepare(case, 10), prepare(case, 1_000)
    small(min(picks, 10_000))  # warm-up
    large(min(picks, 10_000))
    best_small = best_large = float("inf")
    for _ in range(repeat):
        best_small = min(best_small, small(picks))
        best_large = min(best_large, large(picks))
    return picks / best_small, picks / best_large


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--picks", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--all", action="store_true", help="every algorithm, not only the three")
    args = ap.parse_args()
    cases = {**CASES, **MORE} if args.all else CASES
    print(f"python {sys.version.split()[0]}, {args.picks:,} picks, best of {args.repeat}")
    print(f"{'algorithm':<26}{'10 servers':>14}{'1,000 servers':>16}{'10 / 1,000':>12}  target")
    worst = 0.0
    for name, case in cases.items():
        small, large = measure(case, args.picks, args.repeat)
        ratio = small / large
        worst = max(worst, ratio)
        verdict = "ok" if ratio <= 2.0 else "SLOW"
        print(f"{name:<26}{small:>12,.0f}/s{large:>14,.0f}/s{ratio:>11.2f}x  {verdict}")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
