"""Bytes per stick-table entry, measured with tracemalloc at 1,000,000 entries.

Rules: keys look like what the proxy stores (client IPv4 addresses as bytes, or 32-hex-digit
JSESSIONID values); server names are shared strings, as in the proxy. Keys are built while
tracing: the table keeps them alive, so they are part of what one entry costs.

    .venv/bin/python bench/stick_table_mem.py [--entries N] [--kind src|cookie]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from lbd.sticky.table import StickTable


def key_of(kind: str, i: int) -> bytes:
    if kind == "src":
        return b"10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255)
    return b"%032x" % (i * 2654435761)


def measure(entries: int, kind: str) -> float:
    servers = [f"app{n}" for n in range(10)]
    table = StickTable(size=entries, expire=1800.0)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    now = 1000.0
    for i in range(entries):
        table.put(key_of(kind, i), servers[i % 10], now + i * 1e-3)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == entries
    return (after - before) / entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=("src", "cookie"), default=None)
    args = parser.parse_args()
    for kind in (args.kind,) if args.kind else ("src", "cookie"):
        per_entry = measure(args.entries, kind)
        print(f"{kind:6} {args.entries:>10,} entries: {per_entry:,.0f} bytes per entry")


if __name__ == "__main__":
    main()
