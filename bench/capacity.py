#!/usr/bin/env python3
"""Capacity: one lbd process holding N keep-alive client connections (25,000 by default).

    .venv/bin/python bench/capacity.py [--connections 25000] [--duration 60] [--interval 5]

Rules: raises RLIMIT_NOFILE first (to 200,000 when allowed — root with CAP_SYS_RESOURCE — else
to the hard limit; lbd inherits it) and refuses to start when the limit cannot cover the
connections plus 1,000; every connection
sends a GET /200b every `--interval` seconds for `--duration` seconds and every outcome is counted
(sent = answered + failed, by kind); lbd's RSS is read before and with the connections held;
a small wrk keep-alive load (-c10) runs alone and then again while the connections are held, and
both p99s are reported. Prints one report line and writes JSON (bench/results/latest-capacity.json
and --json PATH). Every process is stopped on exit.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import heldconns
import wrk
from lab import Lab, Placement
from procs import StartError, exit_code, failure_kinds, rss_kib, unwind_on_signals, write_results

WANTED_NOFILE = 200_000
TARGET_BYTES_PER_CONN = 3 * 1024
PROBE_CONNECTIONS = 10
OPEN_TIMEOUT_S = 180.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=25_000, help="held connections (25000)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds they are held (60)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between GETs (5)")
    p.add_argument("--clients", type=int, default=0, help="client processes (0: 1 per 12,500)")
    p.add_argument("--proxy", default="lbd", choices=("lbd", "haproxy", "nginx", "direct"),
                   help="what holds the connections (lbd; the others to compare)")  # fmt: skip
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    p.add_argument("--no-latest", action="store_true", help="do not overwrite results/latest-*")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = p.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.interval <= 0:
        p.error("--connections, --duration and --interval must be positive")
    if args.connections > 250 * heldconns.PER_SOURCE:
        p.error(f"at most {250 * heldconns.PER_SOURCE} connections (source addresses)")
    args.clients = args.clients or max(1, -(-args.connections // 12_500))
    return args


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE for this process and its children; StartError if it stays too low."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANTED_NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))  # root: raises hard
    except (ValueError, OSError):
        want = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if want < needed:
        raise StartError(
            f"RLIMIT_NOFILE is {want} and cannot be raised, {needed} descriptors are needed: run "
            "as root (with CAP_SYS_RESOURCE: not in some containers) or raise the hard limit "
            f"(ulimit -Hn, limits.conf), or use --connections {max(0, want - 1000)}"
        )
    return want


def probe(port: int, duration: float, script: Path, cpu: int | None) -> dict[str, float]:
    """The small extra load whose latency tells whether the held connections hurt."""
    r = wrk.run(f"http://127.0.0.1:{port}/200b", PROBE_CONNECTIONS, duration, script, cpu)
    errors = r.socket_errors + r.status_errors
    return {"rps": round(r.rps, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "p999_ms": r.p999_ms, "errors": errors}  # fmt: skip


def hold_and_measure(args: argparse.Namespace, lab: Lab, pid: int, port: int) -> dict[str, Any]:
    script = wrk.write_script(lab.workdir)
    cpu = lab.placement.load_cpu
    window = float(max(2, min(15, round(args.duration / 3))))  # wrk takes whole seconds
    probe(port, 1, script, cpu)  # warm-up: pools and caches
    time.sleep(1)
    baseline_kib = rss_kib(pid)
    alone = probe(port, window, script, cpu)
    ctx = multiprocessing.get_context("fork")
    queue, stop = ctx.Queue(), ctx.Event()
    shares = [args.connections // args.clients + (i < args.connections % args.clients)
              for i in range(args.clients)]  # fmt: skip
    children, first = [], 2
    for share in shares:
        work = (port, share, first, args.interval, queue, stop)
        child = ctx.Process(target=heldconns.hold, args=work, daemon=True)
        child.start()
        children.append(child)
        first += -(-share // heldconns.PER_SOURCE)
    try:
        opened = open_failed = 0
        started = time.monotonic()
        for _ in children:
            _, ok, failed = queue.get(timeout=OPEN_TIMEOUT_S)
            opened, open_failed = opened + ok, open_failed + failed
        open_seconds = time.monotonic() - started
        held_at = time.monotonic()
        time.sleep(min(2.0, args.duration / 4))
        loaded_kib = rss_kib(pid)
        during = probe(port, window, script, cpu)
        time.sleep(max(0.0, args.duration - (time.monotonic() - held_at)))
        stop.set()
        tallies = [queue.get(timeout=heldconns.REQUEST_TIMEOUT_S + 30)[1] for _ in children]
    finally:
        stop.set()
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    failures: dict[str, int] = {}
    for t in tallies:
        for kind, n in t["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    sent = sum(t["sent"] for t in tallies)
    answered = sum(t["answered"] for t in tallies)
    closed_idle = sum(t["closed_while_idle"] for t in tallies)
    per_conn = (loaded_kib - baseline_kib) * 1024 / opened if opened else None
    return {
        "connections": args.connections,
        "opened": opened,
        "open_failed": open_failed,
        "open_seconds": round(open_seconds, 1),
        "held_seconds": args.duration,
        "interval_s": args.interval,
        "client_processes": args.clients,
        "sent": sent,
        "answered": answered,
        "failed": sent - answered,
        "failures": failures,
        "closed_while_idle": closed_idle,
        "rss_baseline_kib": baseline_kib,
        "rss_loaded_kib": loaded_kib,
        "bytes_per_connection": round(per_conn, 1) if per_conn is not None else None,
        "target_bytes_per_connection": TARGET_BYTES_PER_CONN,
        "probe_connections": PROBE_CONNECTIONS,
        "probe_alone": alone,
        "probe_while_held": during,
        "p99_ratio": round(during["p99_ms"] / alone["p99_ms"], 2) if alone["p99_ms"] else None,
        "lbd_alive": os.path.exists(f"/proc/{pid}"),
    }


def render(r: dict[str, Any]) -> str:
    per = r["bytes_per_connection"]
    verdict = "meets" if per is not None and per <= r["target_bytes_per_connection"] else "misses"
    return (
        f"capacity: {r['opened']:,}/{r['connections']:,} connections held {r['held_seconds']:g} s "
        f"on one {r['proxy']} process ({r['open_failed']} failed to open): "
        f"{r['sent']:,} GETs sent, "
        f"{r['answered']:,} answered, {r['failed']} failed{failure_kinds(r['failures'])}, "
        f"{r['closed_while_idle']} connections closed by the proxy while idle; RSS "
        f"{r['rss_baseline_kib'] / 1024:.1f} → {r['rss_loaded_kib'] / 1024:.1f} MiB = "
        f"{per if per is None else f'{per:,.0f}'} B/connection above baseline ({verdict} the "
        f"≤ {r['target_bytes_per_connection']:,} B target); wrk -c{r['probe_connections']} p99 "
        f"{r['probe_alone']['p99_ms']:.2f} ms alone, {r['probe_while_held']['p99_ms']:.2f} ms "
        f"while held ({r['p99_ratio']}x), probe errors "
        f"{r['probe_alone']['errors'] + r['probe_while_held']['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="lbd-capacity-"))
    workdir.chmod(0o755)
    lab: Lab | None = None

    def measure() -> int:
        nonlocal lab
        # lbd needs a descriptor per client plus its backend side; each client process holds
        # its share only, so the lbd side decides.
        nofile = raise_nofile(args.connections + 1000)
        lab = Lab(workdir, Placement.detect(allow_pinning=not args.no_pin), nofile)
        lab.start_backend()
        endpoint = lab.start_proxy(args.proxy)
        pid = endpoint.pid or lab.supervisor.children[0].pid  # direct: the nginx backend
        result = {"proxy": args.proxy, **hold_and_measure(args, lab, pid, endpoint.port)}
        doc = {
            "meta": {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "nproc": os.cpu_count(),
                "nofile": nofile,
                "pinning": {"lbd_cpu": lab.placement.proxy_cpu, "load_cpu": lab.placement.load_cpu},
            },
            "capacity": result,
        }
        print(render(result), flush=True)
        if result["failed"] or result["open_failed"]:
            print(
                f"lbd's log:\n{lab.supervisor.log_tail(f'{args.proxy}-plain', 20)}", file=sys.stderr
            )
        write_results(doc, None if args.no_latest else "latest-capacity.json", args.json)
        return 0

    try:
        return exit_code("capacity", measure)
    finally:
        if lab is not None:
            lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
