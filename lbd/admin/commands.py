"""One function per admin command. Each takes the worker and its arguments and returns text.

Rules: a bad argument raises CommandError with a one-line message (never a stack trace);
commands change live state only through the same objects the proxy reads (ServerState), so an
admin change and a reload cannot disagree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from lbd import __version__
from lbd.inspect.store import ACTIONS
from lbd.state import ADMIN_STATES, ServerState
from lbd.stats.counters import CLASS_LABELS

if TYPE_CHECKING:
    from lbd.health.manager import HealthManager
    from lbd.runtime import Runtime


class Daemon(Protocol):
    """What commands use: a single-process Worker, or the master of several workers (which
    aggregates counters before a `show` and fans changes out; lbd/process/master.py)."""

    started_at: float
    health: HealthManager

    @property
    def runtime(self) -> Runtime: ...

    def clear_counters(self) -> None: ...

    async def reload(self) -> tuple[bool, str]: ...


class CommandError(Exception):
    pass


Command = Callable[["Daemon", list[str]], Awaitable[str]]


def _server(worker: Daemon, ref: str) -> ServerState:
    backend, sep, name = ref.partition("/")
    if not sep or not backend or not name:
        raise CommandError(f"expected BACKEND/SERVER, got {ref!r}")
    be = worker.runtime.backends.get(backend)
    if be is None:
        raise CommandError(f"no such backend: {backend}")
    server = be.server(name)
    if server is None:
        raise CommandError(f"no such server: {backend}/{name}")
    return server


async def cmd_help(worker: Daemon, args: list[str]) -> str:
    return "\n".join(f"{name}  {doc}" for name, (_, doc) in COMMANDS.items())


async def cmd_show_info(worker: Daemon, args: list[str]) -> str:
    rt = worker.runtime
    conns = sum(f.counters.conn_cur for f in rt.frontends.values())
    reqs = sum(f.counters.requests for f in rt.frontends.values())
    lines = {
        "Name": "lbd",
        "Version": __version__,
        "Pid": os.getpid(),
        "Uptime_sec": int(time.time() - worker.started_at),
        "Config": rt.config.path,
        "Generation": rt.generation,
        "CurrConns": conns,
        "CumReq": reqs,
        "Frontends": len(rt.frontends),
        "Backends": len(rt.backends),
        "Servers": len(rt.servers),
    }
    return "\n".join(f"{k}: {v}" for k, v in lines.items())


async def cmd_show_servers(worker: Daemon, args: list[str]) -> str:
    rows = ["# backend/server address status admin weight inflight requests"]
    for be in worker.runtime.backends.values():
        for s in be.servers:
            rows.append(
                f"{be.name}/{s.name} {s.config.address} {s.status()} {s.admin} {s.weight} "
                f"{s.inflight} {s.counters.requests}"
            )
    return "\n".join(rows)


async def cmd_show_stat(worker: Daemon, args: list[str]) -> str:
    if args and args[0] == "json":
        from lbd.stats.snapshot import snapshot

        return json.dumps(snapshot(worker.runtime, worker.started_at))
    if args:
        raise CommandError("usage: show stat [json]")
    rows = [
        "# pxname,svname,scur,smax,stot,bin,bout,econ,eresp,wretr,wredis,status,weight,"
        + ",".join(f"hrsp_{c}" for c in CLASS_LABELS[1:])
        + ",hrsp_other"
    ]
    rt = worker.runtime
    for fe in rt.frontends.values():
        c = fe.counters
        rows.append(
            f"{fe.name},FRONTEND,{c.conn_cur},,{c.requests},{c.bytes_in},{c.bytes_out},,,,,OPEN,,"
            + ",".join(str(n) for n in c.responses[1:])
            + f",{c.responses[0]}"
        )
    for be in rt.backends.values():
        for s in be.servers:
            sc = s.counters
            rows.append(
                f"{be.name},{s.name},{sc.cur_requests},{sc.max_requests},{sc.requests},"
                f"{sc.bytes_in},{sc.bytes_out},{sc.conn_errors},{sc.response_errors},"
                f"{sc.retries},{sc.redispatches},{s.status()},{s.weight},"
                + ",".join(str(n) for n in sc.responses[1:])
                + f",{sc.responses[0]}"
            )
        bc = be.counters
        rows.append(
            f"{be.name},BACKEND,{bc.cur_requests},{bc.max_requests},{bc.requests},{bc.bytes_in},"
            f"{bc.bytes_out},{bc.conn_errors},{bc.response_errors},{bc.retries},"
            f"{bc.redispatches},UP,{sum(s.weight for s in be.servers)},"
            + ",".join(str(n) for n in bc.responses[1:])
            + f",{bc.responses[0]}"
        )
    return "\n".join(rows)


async def cmd_show_modules(worker: Daemon, args: list[str]) -> str:
    rows = ["# frontend module requests 2xx 4xx 5xx p50_ms p95_ms p99_ms"]
    for fe in worker.runtime.frontends.values():
        for name, mc in fe.module_counters.items():
            h = mc.response_time
            rows.append(
                f"{fe.name} {name} {mc.requests} {mc.responses[2]} {mc.responses[4]} "
                f"{mc.responses[5]} {h.quantile(0.5) * 1000:g} {h.quantile(0.95) * 1000:g} "
                f"{h.quantile(0.99) * 1000:g}"
            )
    return "\n".join(rows)


async def cmd_show_errors(worker: Daemon, args: list[str]) -> str:
    """Counts per frontend and reason (as before), then the capture store: per (reason, module)
    what was done and when, and the last samples, newest first, each ending with ` | ` and its
    excerpt (already escaped and masked: one line, printable ASCII). `show errors FRONTEND`
    narrows it to one frontend."""
    frontends = list(worker.runtime.frontends.values())
    if args:
        frontends = [fe for fe in frontends if fe.name == args[0]]
        if len(args) > 1 or not frontends:
            raise CommandError(f"usage: show errors [FRONTEND]; no frontend {args[0]!r}")
    rows = ["# frontend reason count"]
    for fe in frontends:
        for reason, count in sorted(fe.counters.malformed.items()):
            rows.append(f"{fe.name} {reason} {count}")
    rows.append("# frontend module reason count " + " ".join(ACTIONS) + " first_seen last_seen")
    for fe in frontends:
        store = fe.captures
        for e in store.entries():
            actions = " ".join(str(e.actions.get(a, 0)) for a in ACTIONS)
            rows.append(
                f"{fe.name} {e.module} {e.reason} {e.count} {actions} "
                f"{_iso(e.first_seen)} {_iso(e.last_seen)}"
            )
            for sm in reversed(e.samples):
                at = f"{sm.where}+{sm.offset}" if sm.offset >= 0 else "-"
                rows.append(
                    f"  {_iso(sm.time)} {sm.client} {sm.method} {sm.action} {sm.status or '-'} "
                    f"offset={at} reasons={','.join(sm.reasons)} | {sm.excerpt}"
                )
        if store.overflow:
            rows.append(f"{fe.name} - (overflow) {store.overflow}")
    return "\n".join(rows)


def _iso(unix: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(unix))
    return f"{stamp}.{int(unix * 1000) % 1000:03d}"


async def cmd_set_server(worker: Daemon, args: list[str]) -> str:
    if len(args) != 3 or args[1] not in ("state", "weight"):
        raise CommandError("usage: set server BACKEND/SERVER state ready|drain|maint | weight N")
    server = _server(worker, args[0])
    backend = worker.runtime.backends[server.backend_name]
    if args[1] == "state":
        if args[2] not in ADMIN_STATES:
            raise CommandError(f"state must be one of {', '.join(ADMIN_STATES)}, got {args[2]!r}")
        old = server.admin
        server.admin = args[2]
        if old == "maint" and server.admin != "maint":
            # Leaving maintenance is a return to service: ramp in like a server coming up.
            worker.health.slowstarts.begin(server, backend.balancer.server_changed)
        backend.balancer.server_changed(server)
        return f"{args[0]} state {old} -> {server.admin}"
    try:
        weight = int(args[2])
    except ValueError:
        raise CommandError(f"weight must be an integer 0..256, got {args[2]!r}") from None
    if not 0 <= weight <= 256:
        raise CommandError(f"weight must be an integer 0..256, got {weight}")
    old_weight = server.weight
    worker.health.slowstarts.stop(server)  # the operator's weight wins over a running ramp
    server.set_weight(weight)
    backend.balancer.server_changed(server)
    return f"{args[0]} weight {old_weight} -> {weight}"


async def cmd_show_health(worker: Daemon, args: list[str]) -> str:
    """One row per server: check state (HAProxy wording), last check, failures, downtime."""
    if args:
        raise CommandError("usage: show health")
    rows = ["# backend/server health last_check code duration_ms chkfail chkdown downtime_s"]
    for be in worker.runtime.backends.values():
        for s in be.servers:
            h = s.health
            last = h.last_result
            code = last.code if last is not None and last.code is not None else "-"
            ms = round(last.duration * 1000) if last and last.duration is not None else "-"
            rows.append(
                f"{be.name}/{s.name} {h.display().replace(' ', '_')} "
                f"{last.status if last is not None else '-'} {code} {ms} "
                f"{h.check_failures} {h.downs} {h.downtime():.0f}"
            )
    return "\n".join(rows)


async def cmd_enable_health(worker: Daemon, args: list[str]) -> str:
    return _health_switch(worker, args, enable=True)


async def cmd_disable_health(worker: Daemon, args: list[str]) -> str:
    return _health_switch(worker, args, enable=False)


def _health_switch(worker: Daemon, args: list[str], enable: bool) -> str:
    from lbd.health.manager import HealthError

    if len(args) != 1:
        raise CommandError(f"usage: {'enable' if enable else 'disable'} health BACKEND/SERVER")
    server = _server(worker, args[0])
    try:
        return worker.health.enable(server) if enable else worker.health.disable(server)
    except HealthError as exc:
        raise CommandError(str(exc)) from None


async def cmd_show_table(worker: Daemon, args: list[str]) -> str:
    """Stick tables: one summary line each; with BACKEND, its most recently used entries (at
    most N, default 100). Learned session cookies are credentials: only a short hash is shown,
    enough to follow one session, never its value."""
    if len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
        raise CommandError("usage: show table [BACKEND [N]]")
    tables = {
        be.name: (be.config.sticky.table.on, be.sweeper.table)
        for be in worker.runtime.backends.values()
        if be.sweeper is not None and be.config.sticky is not None and be.config.sticky.table
    }
    if not args:
        return (
            "\n".join(
                f"# table: {name}, on: {on}, size: {t.size}, used: {len(t)}, "
                f"evicted: {t.evicted}, expired: {t.expired}"
                for name, (on, t) in tables.items()
            )
            or "no stick table"
        )
    if args[0] not in tables:
        raise CommandError(f"no stick table in backend {args[0]!r}")
    on, table = tables[args[0]]
    limit = int(args[1]) if len(args) == 2 else 100
    now = asyncio.get_running_loop().time()
    rows = [f"# key server idle_s ({len(table)} entries, most recent first)"]
    for key, server, seen in reversed(table.items()[-limit:] if limit else []):
        shown = (
            key.decode("ascii", "replace")
            if on == "src"
            else ("#" + hashlib.blake2b(key, digest_size=4).hexdigest())
        )
        rows.append(f"{shown} {server} {max(now - seen, 0.0):.0f}")
    return "\n".join(rows)


async def cmd_clear_counters(worker: Daemon, args: list[str]) -> str:
    worker.clear_counters()
    return "counters cleared"


async def cmd_reload(worker: Daemon, args: list[str]) -> str:
    ok, report = await worker.reload()
    if not ok:
        return "rejected: the old configuration keeps running\n" + report
    return report


# name → (function, one-line help). Longest names first so "show stat json" finds "show stat".
COMMANDS: dict[str, tuple[Command, str]] = {
    "help": (cmd_help, "this list"),
    "show info": (cmd_show_info, "process and configuration summary"),
    "show stat": (cmd_show_stat, "[json] counters per frontend, server and backend"),
    "show servers": (cmd_show_servers, "servers with address, status, admin state, weight"),
    "show modules": (cmd_show_modules, "requests and latency per application module"),
    "show errors": (cmd_show_errors, "[FRONTEND] malformed requests: counts, then masked samples"),
    "show health": (cmd_show_health, "health check state, last check and counters per server"),
    "show table": (cmd_show_table, "[BACKEND [N]] stick tables, or one table's recent entries"),
    "set server": (cmd_set_server, "B/S state ready|drain|maint, or B/S weight N"),
    "enable health": (cmd_enable_health, "B/S: resume health checks (up until one fails)"),
    "disable health": (cmd_disable_health, "B/S: stop health checks; the server counts as UP"),
    "clear counters": (cmd_clear_counters, "reset every counter to zero"),
    "reload": (cmd_reload, "re-read the configuration file; the old one stays on error"),
}


async def dispatch(worker: Daemon, words: list[str]) -> str:
    for size in (2, 1):
        name = " ".join(words[:size])
        if len(words) >= size and name in COMMANDS:
            func, _ = COMMANDS[name]
            try:
                return await func(worker, words[size:])
            except CommandError as exc:
                return f"error: {exc}"
    return f"error: unknown command {' '.join(words)!r}; try 'help'"
