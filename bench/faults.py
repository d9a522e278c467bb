#!/usr/bin/env python3
"""lbd under faults, four scenarios, each with its own report line and JSON entry.

    .venv/bin/python bench/faults.py [--quick] [--duration 30] [--scenarios kill,reload,...]

- `kill`: three mock EHR servers behind lbd, an open-loop load at half of the measured maximum;
  one server is SIGKILLed at a third of the run. Failed GETs (target 0) and the time from the kill
  to `show servers` saying DOWN.
- `reload`: ten `lbd reload -c FILE` during the run, each after editing the file (a server
  removed or added back, weights changed). Failed requests and refused connections (target 0);
  one request in five opens a fresh connection so refusals are seen.
- `slowloris`: the same normal load alone, then with 1,000 slow connections (a partial header,
  then one byte every few seconds, reconnecting when answered). Normal p99 with ÷ without
  (target ≤ 2), and how many slow connections got a 408.
- `slow-module`: the mocks answer /dmu after 2 s; p99 of the other modules with ÷ without
  (no head-of-line blocking: target ≈ 1).

Rules: a fresh set of mocks and a fresh lbd per scenario (one scenario's damage never leaks into
the next); every load is bounded in time; every request's outcome is counted (rateclient.py);
nothing but 127.0.0.1. Writes bench/results/latest-faults.json (and --json PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import configs
import throughput
import uvloop
import wrk
from lab import LBD_ENV, Placement
from procs import (
    StartError,
    Supervisor,
    exit_code,
    failure_kinds,
    free_port,
    unwind_on_signals,
    wait_port,
    write_results,
)
from rateclient import Outcome, RateClient

SCENARIOS = ("kill", "reload", "slowloris", "slow-module")
MOCKS = 3
LOAD_FRACTION = 0.5
PATHS = [p for p, w in throughput.EHR_MIX for _ in range(w)]
OTHER_MODULES = [m for m in configs.MODULES if m != "dmu"]
SLOW_REQUEST = b"GET /accueil/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, help="seconds per load run (30; --quick: 6)")
    p.add_argument("--quick", action="store_true", help="6 s runs, 200 slow connections (smoke)")
    p.add_argument("--slow-connections", type=int, default=1000, metavar="N")
    p.add_argument("--reloads", type=int, default=10, metavar="N")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list (%(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    p.add_argument("--no-latest", action="store_true", help="do not overwrite results/latest-*")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = p.parse_args(argv)
    if args.quick:
        args.slow_connections = min(args.slow_connections, 200)
    args.duration = args.duration or (6.0 if args.quick else 30.0)
    if args.duration < 2:
        p.error("--duration must be at least 2 seconds")
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        p.error(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = chosen
    return args


# --- the lab: mocks + lbd ---------------------------------------------------------------------


def lbd_config(port: int, mocks: list[int], admin: Path, http_request_s: float,
               weights: list[int] | None = None) -> str:  # fmt: skip
    """lbd as a hospital would run it in front of three servers: active and passive checks,
    retries with redispatch (connect failures and connections that die before answering)."""
    weights = weights or [10] * len(mocks)
    servers = "".join(
        f'      - {{name: s{i}, address: "127.0.0.1:{p}", weight: {w}}}\n'
        for i, (p, w) in enumerate(zip(mocks, weights, strict=True), 1)
        if w > 0
    )
    modules = "".join(f"      - {{name: {m}, path_prefix: /{m}/}}\n" for m in configs.MODULES)
    return f"""global:
  admin_socket: {admin}
  log:
    access: "off"
defaults:
  retries: 3
  redispatch: true
  retry_on: [conn-failure, empty-response]
  timeouts: {{connect: 1s, http_request: {http_request_s:g}s}}
frontends:
  ehr:
    bind: ["127.0.0.1:{port}"]
    modules:
{modules}    default_backend: app
backends:
  app:
    balance: roundrobin
    health_check: {{type: http, path: /health, interval: 1s, timeout: 500ms, rise: 2, fall: 2}}
    observe: {{mode: layer4, error_limit: 3, on_error: mark-down}}
    servers:
{servers}"""


class FaultLab:
    """Three mocks and one lbd under `workdir`, stopped by `stop`."""

    def __init__(self, workdir: Path, placement: Placement, http_request_s: float) -> None:
        self.workdir = workdir
        self.placement = placement
        self.supervisor = Supervisor(workdir)
        self.admin = workdir / "admin.sock"
        self.config = workdir / "lbd.yaml"
        self.http_request_s = http_request_s
        self.mock_ports: list[int] = []
        self.mock_pids: list[int] = []
        self.port = 0

    def start(self) -> None:
        for i in range(1, MOCKS + 1):
            port = free_port()
            argv = [sys.executable, "-m", "lbd", "mock", "--name", f"app{i}", "--port", str(port)]
            proc = self.supervisor.spawn(f"mock{i}", argv, self.placement.load_cpu, LBD_ENV)
            self.mock_ports.append(port)
            self.mock_pids.append(proc.pid)
        for port in self.mock_ports:
            wait_port(port, None)
        self.port = free_port()
        self.write_config()
        argv = [sys.executable, "-m", "lbd", "run", "-c", str(self.config)]
        proc = self.supervisor.spawn("lbd", argv, self.placement.proxy_cpu, LBD_ENV)
        try:
            wait_port(self.port, proc)
        except StartError as e:
            raise StartError(f"lbd: {e}\n{self.supervisor.log_tail('lbd')}") from None

    def write_config(self, weights: list[int] | None = None) -> None:
        text = lbd_config(self.port, self.mock_ports, self.admin, self.http_request_s, weights)
        self.config.write_text(text)

    def stop(self) -> None:
        self.supervisor.stop_all()

    def max_rps(self, seconds: int) -> float:
        """What lbd and the mocks sustain together: wrk, 50 connections, the EHR mix."""
        script = wrk.write_script(self.workdir, "mix", throughput.rotation(throughput.EHR_MIX))
        result = wrk.run(f"http://127.0.0.1:{self.port}/accueil/", 50, seconds, script,
                         self.placement.load_cpu)  # fmt: skip
        return result.rps

    async def admin_command(self, command: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.admin))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            return data.decode()
        finally:
            writer.close()

    def mock_control(self, index: int, query: str) -> None:
        url = f"http://127.0.0.1:{self.mock_ports[index]}/_mock/{query}"
        with urllib.request.urlopen(url, timeout=5) as response:  # 127.0.0.1 only
            response.read()


# --- scenarios --------------------------------------------------------------------------------


def _summary(outcome: Outcome) -> dict[str, Any]:
    return {
        "sent": outcome.sent,
        "answered": outcome.answered,
        "failed": outcome.failed,
        "failures": outcome.failures,
        "first_failures_at_s": outcome.failure_times_s[:10],
        "p50_ms": outcome.percentile(50),
        "p99_ms": outcome.percentile(99),
        "p999_ms": outcome.percentile(99.9),
    }


async def scenario_kill(lab: FaultLab, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    victim = 1  # s2
    client = RateClient(lab.port, PATHS, rate, args.duration)
    load = asyncio.create_task(client.run())
    await asyncio.sleep(args.duration / 3)
    os.kill(lab.mock_pids[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    down_after: float | None = None
    while not load.done() and down_after is None:
        text = await lab.admin_command("show servers")
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == f"app/s{victim + 1}" and fields[2] == "DOWN":
                down_after = time.monotonic() - killed_at
        await asyncio.sleep(0.05)
    outcome = await load
    return {
        "rate": round(rate, 1),
        "killed_at_s": round(args.duration / 3, 1),
        "marked_down_after_s": round(down_after, 2) if down_after is not None else None,
        **_summary(outcome),
    }


def render_kill(r: dict[str, Any]) -> str:
    down = r["marked_down_after_s"]
    down_text = f"marked DOWN {down:.2f} s after the kill" if down is not None else "NEVER DOWN"
    return (
        f"fault kill: 1 of 3 servers SIGKILLed at {r['killed_at_s']:g} s under {r['rate']:,.0f} "
        f"req/s: {r['sent']:,} GETs, {r['failed']} failed{failure_kinds(r['failures'])} "
        "(target 0); "
        f"{down_text}; p99 {r['p99_ms']} ms"
    )


# Each reload edits the file: a server removed, added back, weights changed.
RELOAD_WEIGHTS = ([10, 10, 0], [10, 10, 10], [20, 10, 10], [10, 30, 10], [10, 10, 10])


async def scenario_reload(lab: FaultLab, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    client = RateClient(lab.port, PATHS, rate, args.duration, fresh_every=5)
    load = asyncio.create_task(client.run())
    step = args.duration / (args.reloads + 1)
    results: list[dict[str, Any]] = []
    for i in range(args.reloads):
        await asyncio.sleep(step)
        lab.write_config(RELOAD_WEIGHTS[i % len(RELOAD_WEIGHTS)])
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbd", "reload", "-c", str(lab.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **LBD_ENV},
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        results.append({"exit": proc.returncode, "seconds": round(time.monotonic() - started, 2),
                        "output": out.decode(errors="replace").strip()[-300:]})  # fmt: skip
    outcome = await load
    return {
        "rate": round(rate, 1),
        "reloads": len(results),
        "reloads_applied": sum(1 for r in results if r["exit"] == 0),
        "reload_results": results,
        "refused": outcome.failures.get("refused", 0),
        **_summary(outcome),
    }


def render_reload(r: dict[str, Any]) -> str:
    return (
        f"fault reload: {r['reloads_applied']}/{r['reloads']} reloads applied during "
        f"{r['sent']:,} requests at {r['rate']:,.0f} req/s: {r['failed']} failed"
        f"{failure_kinds(r['failures'])}, {r['refused']} refused connections (target 0 and 0)"
    )


class _SlowTally:
    def __init__(self) -> None:
        self.attempts = 0
        self.got_408 = 0
        self.got_other: dict[str, int] = {}
        self.closed_silently = 0
        self.open_at_end = 0
        self.connect_failed = 0


async def _slow_connection(port: int, stop: asyncio.Event, drip_s: float, t: _SlowTally) -> None:
    """One slowloris slot: a partial header, a byte every `drip_s`, again when answered."""
    while not stop.is_set():
        t.attempts += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            t.connect_failed += 1
            await asyncio.sleep(drip_s)
            continue
        try:
            writer.write(SLOW_REQUEST)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    head = await asyncio.wait_for(reader.read(64), drip_s)
                    if not head:
                        t.closed_silently += 1
                    elif head.startswith(b"HTTP/1.1 408") or head.startswith(b"HTTP/1.0 408"):
                        t.got_408 += 1
                    else:
                        code = head[9:12].decode(errors="replace")
                        t.got_other[code] = t.got_other.get(code, 0) + 1
                    break
                writer.write(b"x")
            else:
                t.open_at_end += 1
        except ConnectionError:
            t.closed_silently += 1
        finally:
            writer.close()


async def _slowloris(port: int, count: int, drip: float, stop_flag: Any, queue: Any) -> None:
    stop, tally = asyncio.Event(), _SlowTally()
    slow = [asyncio.create_task(_slow_connection(port, stop, drip, tally)) for _ in range(count)]
    while not stop_flag.is_set():  # a multiprocessing.Event: polled, it cannot be awaited
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait(slow, timeout=drip + 5)
    queue.put(vars(tally))


def _slowloris_process(port: int, count: int, drip: float, stop_flag: Any, queue: Any) -> None:
    """Child-process entry point: the attack must not share the normal client's event loop."""
    uvloop.run(_slowloris(port, count, drip, stop_flag, queue))


async def scenario_slowloris(
    lab: FaultLab, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    alone = await RateClient(lab.port, PATHS, rate, args.duration).run()
    await asyncio.sleep(1)
    drip = min(3.0, lab.http_request_s / 3)
    ctx = multiprocessing.get_context("fork")
    stop_flag, queue = ctx.Event(), ctx.Queue()
    work = (lab.port, args.slow_connections, drip, stop_flag, queue)
    attacker = ctx.Process(target=_slowloris_process, args=work, daemon=True)
    attacker.start()
    try:
        await asyncio.sleep(min(2.0, args.duration / 4))  # the slow ones are in place first
        attacked = await RateClient(lab.port, PATHS, rate, args.duration).run()
        stop_flag.set()
        tally = _SlowTally()
        vars(tally).update(await asyncio.to_thread(queue.get, True, drip + 15))
    finally:
        stop_flag.set()
        attacker.join(timeout=5)
        if attacker.is_alive():
            attacker.kill()
    p99_alone, p99_attacked = alone.percentile(99), attacked.percentile(99)
    return {
        "rate": round(rate, 1),
        "slow_connections": args.slow_connections,
        "http_request_timeout_s": lab.http_request_s,
        "drip_s": drip,
        "slow_attempts": tally.attempts,
        "slow_got_408": tally.got_408,
        "slow_got_other": tally.got_other,
        "slow_closed_without_answer": tally.closed_silently,
        "slow_open_at_end": tally.open_at_end,
        "slow_connect_failed": tally.connect_failed,
        "alone": _summary(alone),
        "attacked": _summary(attacked),
        "p99_ratio": round(p99_attacked / p99_alone, 2) if p99_alone and p99_attacked else None,
    }


def render_slowloris(r: dict[str, Any]) -> str:
    finished = r["slow_attempts"] - r["slow_open_at_end"]
    return (
        f"fault slowloris: {r['slow_connections']:,} slow connections ({r['slow_attempts']:,} "
        f"attempts, {finished:,} ended: {r['slow_got_408']:,} got 408, "
        f"{r['slow_closed_without_answer']} closed without answer, other {r['slow_got_other']}); "
        f"normal load {r['rate']:,.0f} req/s p99 {r['alone']['p99_ms']} ms alone, "
        f"{r['attacked']['p99_ms']} ms attacked ({r['p99_ratio']}x, target ≤ 2x); normal "
        f"failures {r['alone']['failed']} + {r['attacked']['failed']}"
    )


async def scenario_slow_module(
    lab: FaultLab, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    normal = await RateClient(lab.port, PATHS, rate, args.duration).run()
    for i in range(MOCKS):
        lab.mock_control(i, "latency?ms=2000&module=dmu")
    slowed = await RateClient(lab.port, PATHS, rate, args.duration).run()
    for i in range(MOCKS):
        lab.mock_control(i, "reset")
    before, after = normal.percentile(99, OTHER_MODULES), slowed.percentile(99, OTHER_MODULES)
    return {
        "rate": round(rate, 1),
        "other_modules": OTHER_MODULES,
        "without": _summary(normal),
        "with": _summary(slowed),
        "other_p99_without_ms": before,
        "other_p99_with_ms": after,
        "dmu_p50_with_ms": slowed.percentile(50, ["dmu"]),
        "p99_ratio": round(after / before, 2) if before and after else None,
    }


def render_slow_module(r: dict[str, Any]) -> str:
    return (
        f"fault slow-module: /dmu answers in 2 s (dmu p50 {r['dmu_p50_with_ms']} ms): other "
        f"modules' p99 {r['other_p99_without_ms']} ms without, {r['other_p99_with_ms']} ms with "
        f"({r['p99_ratio']}x) at {r['rate']:,.0f} req/s; failures {r['without']['failed']} + "
        f"{r['with']['failed']}"
    )


_Scenario = Callable[[FaultLab, float, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]
RUNNERS: dict[str, tuple[_Scenario, Callable[[dict[str, Any]], str]]] = {
    "kill": (scenario_kill, render_kill),
    "reload": (scenario_reload, render_reload),
    "slowloris": (scenario_slowloris, render_slowloris),
    "slow-module": (scenario_slow_module, render_slow_module),
}


def run_one(name: str, args: argparse.Namespace, placement: Placement) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"lbd-fault-{name}-"))
    http_request_s = max(2.0, min(10.0, round(args.duration / 3)))
    lab = FaultLab(workdir, placement, http_request_s)
    try:
        lab.start()
        max_rps = lab.max_rps(2 if args.quick else 5)
        runner, render = RUNNERS[name]
        result = uvloop.run(runner(lab, max_rps * LOAD_FRACTION, args))
        result = {"max_rps": round(max_rps, 1), "duration_s": args.duration, **result}
        result["lbd_alive"] = all(p.poll() is None for p in lab.supervisor.children[-1:])
        print(render(result), flush=True)
        return result
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    placement = Placement.detect(allow_pinning=not args.no_pin)
    doc: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(),
            "duration_s": args.duration,
            "load_fraction_of_max": LOAD_FRACTION,
        },
        "faults": {},
    }

    def measure() -> int:
        for name in args.scenarios:
            doc["faults"][name] = run_one(name, args, placement)
        write_results(doc, None if args.no_latest else "latest-faults.json", args.json)
        return 0

    return exit_code("faults", measure)


if __name__ == "__main__":
    sys.exit(main())
