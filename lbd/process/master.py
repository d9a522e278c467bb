"""The master of `global.workers: N` (N >= 2): binds, supervises, fans out, aggregates.

Rules (after gunicorn's arbiter):
- Signal handlers and worker events only enqueue; one loop (`run`) dispatches them.
- The master validates the configuration and binds every listening socket itself; workers are
  fresh interpreters (`python -m lbd worker`, lbd/process/child.py) that get the sockets over a
  socketpair and all accept on them (shared file descriptors: no SO_REUSEPORT). The master
  keeps its copies across reloads and crashes, so a port is never closed while lbd runs.
- Crash handling: a worker that exits unexpectedly is restarted after a backoff (0.1 s doubling
  to 10 s, back to 0.1 s once a worker has lived 30 s). A worker that exits, or is not ready
  within BOOT_TIMEOUT, before it ever reported ready is a boot failure; MAX_BOOT_FAILURES in a
  row (no worker became ready in between) stop everything with exit code 3.
- Reload: validate the file (invalid: nothing changes, errors returned) and reject here what a
  worker would (TLS added to or removed from a bound address), bind the new listeners, swap the
  master's runtime (its health manager runs the checks), then send the new configuration to
  every worker, which swaps its runtime beside the old one exactly as a single process does.
  Workers are never replaced on reload: no connection is refused. If every worker refuses it,
  the master goes back to the old configuration (a restarted worker's `hello` must never hand
  out a configuration the running ones refused) and the reload is reported rejected.
- Listening sockets go to workers over a non-blocking socketpair: a worker that does not drain
  it is stuck, skipped and killed (it is restarted and gets every socket in `hello`).
- One health truth: active checks run here only; workers forward passive triggers and apply the
  verdicts broadcast from here (lbd/health/manager.py, follower mode).
- Statistics: the master's runtime serves no traffic, so its counter objects hold the totals:
  each scrape or `show` asks every ready worker for a dump (DUMP_TIMEOUT each; a worker that
  does not answer counts with its last dump, and is logged) and merges them with the counters
  of workers that exited (lbd/stats/aggregate.py `retire`): totals never go down while lbd
  runs, except on `clear counters`. The usual renderers then show the sums.
- The admin socket, the stats listener and sd_notify are the master's. READY=1 once every worker
  is ready; WATCHDOG=1 only when every running worker answered a ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from lbd.admin.commands import dispatch
from lbd.config.schema import Address, Config
from lbd.errors import ConfigErrors
from lbd.health.manager import HealthManager
from lbd.process.control import Channel, ChannelClosed, Message, pack_config, send_listeners
from lbd.process.systemd import Notifier
from lbd.process.worker import StartError, bind_socket
from lbd.runtime import Runtime, RuntimeHolder, build_runtime, describe_changes
from lbd.state import ServerState
from lbd.stats.aggregate import Dump, merge_into, retire
from lbd.tls.context import LoadedTls
from lbd.tls.listen import config_tls_changes

log = logging.getLogger("lbd.events")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a worker that lived this long resets the backoff
MAX_BOOT_FAILURES = 5
BOOT_TIMEOUT = 30.0
DUMP_TIMEOUT = 2.0  # per worker, for one scrape
COMMAND_TIMEOUT = 10.0  # admin command or reload in one worker
PING_TIMEOUT = 2.0
STOP_MARGIN = 5.0  # beyond timeouts.shutdown before a stuck worker is killed

# Admin commands that read counters: totals across workers first. Commands that change live
# state in the data path: applied here (the master's view) and then in every worker.
AGGREGATED = frozenset({"show info", "show stat", "show servers", "show modules", "show errors"})
FAN_OUT = frozenset({"set server", "clear counters"})
# Per-process state with no meaningful total (stick tables): each worker's answer, labelled.
PER_WORKER = frozenset({"show table"})


def worker_count(setting: int | str) -> int:
    """`global.workers`: a number, or `auto` (the CPUs this process may run on)."""
    if setting == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return int(setting)


@dataclass
class Slot:
    """One worker position; the process in it is replaced when it dies."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    listeners: socket.socket | None = None  # master's end of the SCM_RIGHTS socketpair
    ready: bool = False
    started: float = 0.0  # monotonic, of the current process
    backoff: float = BACKOFF_FIRST
    restarts: int = 0
    pid: int = 0
    last_dump: Dump | None = None  # its counters at the last reading it answered
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def serving(self) -> bool:
        return self.ready and self.channel is not None and not self.channel.closed


class Master:
    def __init__(self, config: Config, count: int, log_level: str = "info") -> None:
        self.config = config
        self.count = count
        self.log_level = log_level
        self.holder: RuntimeHolder | None = None
        self.health = HealthManager()
        self.notifier = Notifier()
        self.started_at = time.time()
        self.sockets: dict[Address, socket.socket] = {}
        self.slots = [Slot(i + 1) for i in range(count)]
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.boot_failures = 0
        self.announced = False  # READY=1 sent
        self.stopping = False
        self.exit_code = 0
        self.stale: list[int] = []  # workers counted with their previous dump at the last reading
        self.retired: Dump | None = None  # counters of the workers that exited, summed
        self.cleared = 0  # `clear counters` generations: a dump asked for before one is void
        self._reload_lock = asyncio.Lock()
        self._admin: Any = None
        self._stats: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def runtime(self) -> Runtime:
        assert self.holder is not None
        return self.holder.runtime

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything and spawn the workers; StartError (exit 3) when a bind fails."""
        loop = asyncio.get_running_loop()
        # Handlers only enqueue (run() dispatches), so they can go in before anything is bound:
        # a SIGTERM while starting then stops gracefully instead of killing the master.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.events.put_nowait, ("stop", None))
        loop.add_signal_handler(signal.SIGHUP, self.events.put_nowait, ("reload", None))
        loop.add_signal_handler(signal.SIGUSR1, self.events.put_nowait, ("reopen", None))
        try:
            runtime = build_runtime(self.config, None, loop)  # loads TLS certificates too
        except ConfigErrors as errors:
            raise StartError("\n".join(str(e) for e in errors.errors)) from None
        self.holder = RuntimeHolder(runtime)
        self.health.start(self.holder)
        self.health.on_transition = self._broadcast_server
        self._bind_new(self.config)
        await self._start_side_servers(self.config)
        log.info("master %d starting %d workers", os.getpid(), self.count)
        for slot in self.slots:
            await self._spawn(slot)

    def _bind_new(self, cfg: Config) -> list[str]:
        """Bind the addresses of `cfg` not bound yet; all or nothing (StartError)."""
        fresh: dict[Address, socket.socket] = {}
        try:
            for fe in cfg.frontends:
                for addr in fe.bind:
                    if addr not in self.sockets and addr not in fresh:
                        fresh[addr] = bind_socket(addr)
        except StartError:
            for sock in fresh.values():
                sock.close()
            raise
        self.sockets.update(fresh)
        for addr in fresh:
            log.info("listening on %s", addr)
        return [f"listener added: {addr}" for addr in fresh]

    def _close_removed(self, cfg: Config) -> list[str]:
        wanted = {addr for fe in cfg.frontends for addr in fe.bind}
        removed = []
        for addr in [a for a in self.sockets if a not in wanted]:
            self.sockets.pop(addr).close()
            removed.append(f"listener removed: {addr}")
        return removed

    async def _start_side_servers(self, cfg: Config) -> None:
        from lbd.admin.server import AdminServer

        path = cfg.global_.admin_socket
        if path is not None:
            admin = AdminServer(self, path, handler=self.admin_command)
            try:
                await admin.start()
            except OSError as exc:
                raise StartError(f"cannot open admin socket {path}: {exc.strerror}") from exc
            self._admin = admin
        stats = cfg.global_.stats
        if stats is not None:
            from lbd.stats.server import StatsServer

            assert self.holder is not None
            server = StatsServer(
                started_at=self.started_at, auth_file=stats.auth_file, refresh=self.refresh
            )
            try:
                await server.start(self.holder, stats.bind)
            except OSError as exc:
                raise StartError(f"stats listener {stats.bind}: {exc.strerror or exc}") from exc
            self._stats = server

    # --- workers ----------------------------------------------------------------------------

    async def _spawn(self, slot: Slot) -> None:
        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listeners, child_listeners = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        listeners.setblocking(False)  # a worker that never drains it must not block this loop
        argv = [
            sys.executable,
            "-m",
            "lbd",
            "worker",
            "--control-fd",
            str(child_control.fileno()),
            "--listeners-fd",
            str(child_listeners.fileno()),
            "--index",
            str(slot.index),
            "--log-level",
            self.log_level,
        ]
        slot.ready = False
        slot.started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(child_control.fileno(), child_listeners.fileno()),
            )
        except OSError as exc:
            control.close()
            listeners.close()
            log.error("Worker #%d cannot be spawned: %s", slot.index, exc)
            self.events.put_nowait(("exited", (slot, None, -1)))
            return
        finally:
            child_control.close()
            child_listeners.close()
        slot.proc, slot.pid, slot.listeners = proc, proc.pid, listeners
        slot.channel = await Channel.open(control, functools.partial(self._from_worker, slot))
        self._spawn_task(self._watch(slot, proc))
        loop = asyncio.get_running_loop()
        loop.call_later(BOOT_TIMEOUT, self._boot_deadline, slot, proc)

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.events.put_nowait(("exited", (slot, proc, code)))

    def _boot_deadline(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        if slot.proc is proc and not slot.ready and proc.returncode is None:
            log.error(
                "Worker #%d (pid %d) not ready after %gs: killed",
                slot.index,
                proc.pid,
                BOOT_TIMEOUT,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _from_worker(self, slot: Slot, message: Message) -> Message | None:
        kind = message["kind"]
        if kind == "hello":
            # Sockets and configuration read in one step: a reload cannot come in between.
            assert slot.listeners is not None
            wanted = {addr for fe in self.config.frontends for addr in fe.bind}
            # Only the sockets of this configuration: one dropped by a reload still in progress
            # would stay listening in the worker, never served.
            send_listeners(slot.listeners, {a: s for a, s in self.sockets.items() if a in wanted})
            return {"config": pack_config(self.config), "servers": self._server_rows()}
        if kind == "ready":
            self.events.put_nowait(("ready", slot))
        elif kind == "passive":
            self.health.apply_passive(message["backend"], message["server"], message["what"])
        return None

    def _on_ready(self, slot: Slot) -> None:
        slot.ready = True
        self.boot_failures = 0
        log.info("Worker #%d (pid %d) ready.", slot.index, slot.pid)
        if not self.announced and all(s.serving for s in self.slots):
            self.announced = True
            log.info("master %d: all %d workers ready", os.getpid(), self.count)
            self.notifier.ready(self.status_line())
            self.notifier.start_watchdog(self._workers_answer)

    def _on_exit(self, slot: Slot, proc: asyncio.subprocess.Process | None, code: int) -> None:
        if proc is not None and slot.proc is not proc:
            return
        was_ready = slot.ready
        slot.ready = False
        slot.proc = None
        if slot.last_dump is not None:
            self.retired = retire(self.retired, slot.last_dump)  # its totals outlive it
            slot.last_dump = None
        if slot.channel is not None:
            self._spawn_task(slot.channel.close())
            slot.channel = None
        if slot.listeners is not None:
            slot.listeners.close()
            slot.listeners = None
        if self.stopping:
            return
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if not was_ready:
            self.boot_failures += 1
            log.error(
                "Worker #%d (pid %d) failed to start (%s), %d consecutive boot failures.",
                slot.index,
                slot.pid,
                how,
                self.boot_failures,
            )
            if self.boot_failures >= MAX_BOOT_FAILURES:
                log.critical("workers cannot start: stopping (exit code 3)")
                self.exit_code = 3
                self.events.put_nowait(("stop", None))
                return
        else:
            log.warning("Worker #%d (pid %d) %s unexpectedly.", slot.index, slot.pid, how)
            if time.monotonic() - slot.started >= STABLE_AFTER:
                slot.backoff = BACKOFF_FIRST
        delay = slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
        slot.restarts += 1
        log.info("Worker #%d restarting in %gs.", slot.index, delay)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.events.put_nowait, ("respawn", slot))

    async def _workers_answer(self) -> bool:
        """For the watchdog: every running worker answered a ping (and one runs at least)."""
        live = [s for s in self.slots if s.serving]
        if not live:
            return False
        results = await asyncio.gather(
            *(self._ask(s, "ping", PING_TIMEOUT) for s in live), return_exceptions=False
        )
        return all(r is not None for r in results)

    async def _ask(self, slot: Slot, kind: str, timeout: float, **fields: Any) -> Message | None:
        channel = slot.channel
        if channel is None:
            return None
        try:
            return await channel.request(kind, timeout, **fields)
        except (ChannelClosed, TimeoutError):
            return None

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- health -----------------------------------------------------------------------------

    def _server_rows(self, servers: list[ServerState] | None = None) -> list[list[Any]]:
        chosen = servers if servers is not None else list(self.runtime.servers.values())
        return [[s.backend_name, s.name, s.up, s.admin, s.weight] for s in chosen]

    def _broadcast_server(self, server: ServerState) -> None:
        self._broadcast_rows(self._server_rows([server]))

    def _broadcast_rows(self, rows: list[list[Any]]) -> None:
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.notify("servers", servers=rows)

    # --- run --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Dispatch events until stopped; returns the exit code."""
        while True:
            kind, arg = await self.events.get()
            if kind == "stop":
                break
            if kind == "ready":
                self._on_ready(arg)
            elif kind == "exited":
                self._on_exit(*arg)
            elif kind == "respawn":
                if not self.stopping and arg.proc is None:
                    await self._spawn(arg)
            elif kind == "reload":
                self._spawn_task(self._reload_from_signal())
            elif kind == "reopen":
                for slot in self.slots:
                    if slot.channel is not None:
                        slot.channel.notify("reopen")
        await self.graceful_stop()
        return self.exit_code

    async def _reload_from_signal(self) -> None:
        ok, report = await self.reload()
        if ok:
            log.info("reload (SIGHUP): %s", report.replace("\n", "; "))

    async def graceful_stop(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        log.info("master %d stopping: workers finish their in-flight requests", os.getpid())
        # The master's copies go first: once the workers close theirs, the ports are closed.
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.notify("stop")
        grace = max((f.timeouts.shutdown for f in self.config.frontends), default=30.0)
        procs = [s.proc for s in self.slots if s.proc is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace + STOP_MARGIN)
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop in time: killed", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await self.health.stop()
        for side in (self._admin, self._stats):
            if side is not None:
                await side.stop()
        for slot in self.slots:
            if slot.channel is not None:
                await slot.channel.close()
            if slot.listeners is not None:
                slot.listeners.close()

    # --- reload -----------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Re-read the file; (False, errors) leaves the master and every worker as they were."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(self.status_line())

    async def _reload(self) -> tuple[bool, str]:
        from lbd.config.load import load_config
        from lbd.tls.context import load_tls

        loop = asyncio.get_running_loop()
        try:
            new_cfg = await loop.run_in_executor(None, load_config, self.config.path)
            # Certificates checked here first: a bad one rejects the reload before any worker
            # sees it (each worker loads its own copy again).
            tls = await loop.run_in_executor(None, load_tls, new_cfg)
        except ConfigErrors as errors:
            for err in errors.errors:
                log.error("reload rejected: %s", err)
            return False, "\n".join(str(e) for e in errors.errors)
        flips = config_tls_changes(self.config, new_cfg, self.sockets)
        if flips:  # every worker would refuse it (lbd/tls/listen.py): refuse it here first
            for problem in flips:
                log.error("reload rejected: %s", problem)
            return False, "\n".join(flips)
        # From here to the fan-out, no await: a worker's `hello` sees old or new, never a mix.
        before = set(self.sockets)
        try:
            added = self._bind_new(new_cfg)
        except StartError as exc:
            log.error("reload rejected: %s", exc)
            return False, str(exc)
        fresh = {a: s for a, s in self.sockets.items() if a not in before}
        old, old_cfg = self.runtime, self.config
        old_tls = LoadedTls(
            {name: fe.tls for name, fe in old.frontends.items() if fe.tls is not None},
            {key: st.pool.ssl for key, st in old.servers.items() if st.pool.ssl is not None},
        )
        new = build_runtime(new_cfg, old, loop, tls)
        assert self.holder is not None
        self.holder.runtime = new
        self.health.reload(old, new)
        self.config = new_cfg
        packed = pack_config(new_cfg)
        targets = [s for s in self.slots if self._pass_listeners(s, fresh)]
        answers = await asyncio.gather(
            *(self._ask(s, "reload", COMMAND_TIMEOUT, config=packed) for s in targets)
        )
        problems = []
        for slot, answer in zip(targets, answers, strict=True):
            if answer is None:
                problems.append(f"worker #{slot.index}: no answer (restarting?)")
            elif not answer.get("ok"):
                problems.append(f"worker #{slot.index}: {answer.get('report')}")
        for problem in problems:
            log.error("reload: %s", problem)
        if targets and all(a is not None and not a.get("ok") for a in answers):
            # Every worker kept the old configuration: so does the master.
            back = build_runtime(old_cfg, old, loop, old_tls)  # old's server states back
            back.generation = old.generation
            self.holder.runtime = back
            self.health.reload(new, back)
            self.config = old_cfg
            for addr in fresh:
                self.sockets.pop(addr).close()
            self._broadcast_rows(self._server_rows())
            log.error("reload rejected by every worker: the old configuration keeps running")
            return False, "\n".join(problems)
        removed = self._close_removed(new_cfg)
        # Verdicts broadcast while a worker was between two configurations may have missed it.
        self._broadcast_rows(self._server_rows())
        log.info(
            "configuration reloaded (generation %d), %d workers",
            new.generation,
            len(targets) - len(problems),
        )
        changes = [*added, *removed, *describe_changes(old_cfg, new_cfg), *problems]
        return True, "\n".join(changes) if changes else "no change"

    def _pass_listeners(self, slot: Slot, fresh: dict[Address, socket.socket]) -> bool:
        """Send a running worker the new listening sockets; False when it cannot take part in
        the reload (gone, or stuck: then killed, and its restart gets every socket in `hello`)."""
        channel, listeners, proc = slot.channel, slot.listeners, slot.proc
        if channel is None or channel.closed or listeners is None:
            return False
        try:
            send_listeners(listeners, fresh)
        except BlockingIOError:
            log.error("Worker #%d (pid %d) does not take its sockets: killed", slot.index, slot.pid)
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            return False
        except OSError as exc:  # it died and is not reaped yet: its restart gets them all
            log.warning("Worker #%d (pid %d) left out of the reload: %s", slot.index, slot.pid, exc)
            return False
        return True

    # --- admin and statistics ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Make the master's counters the totals over every worker, alive or exited."""
        live = [s for s in self.slots if s.serving]
        asked = [(s.proc, self.cleared) for s in live]
        answers = await asyncio.gather(*(self._ask(s, "dump", DUMP_TIMEOUT) for s in live))
        self.stale = []
        for slot, answer, (proc, cleared) in zip(live, answers, asked, strict=True):
            if slot.proc is not proc or self.cleared != cleared:
                # It exited meanwhile (its previous dump is already retired: storing this one
                # would count it twice), or counters were cleared: this answer is out of date.
                continue
            if answer is None or "dump" not in answer:
                if slot.last_dump is not None:
                    self.stale.append(slot.index)
            else:
                slot.last_dump = answer["dump"]
        if self.stale:
            log.warning(
                "statistics: worker(s) %s did not answer; their previous counters are used",
                ", ".join(f"#{i}" for i in self.stale),
            )
        dumps = [s.last_dump for s in self.slots if s.last_dump is not None]
        merge_into(self.runtime, [*dumps, self.retired] if self.retired is not None else dumps)

    async def admin_command(self, words: list[str]) -> str:
        """An admin-socket command: aggregated, applied here and fanned out, or the master's."""
        name = " ".join(words[:2])
        if name in PER_WORKER:
            return await self._per_worker(words)
        if name in AGGREGATED:
            await self.refresh()
        answer = await dispatch(self, words)
        if name in FAN_OUT and not answer.startswith("error:"):
            live = [s for s in self.slots if s.channel is not None]
            answers = await asyncio.gather(
                *(self._ask(s, "admin", COMMAND_TIMEOUT, words=words) for s in live)
            )
            for slot, reply in zip(live, answers, strict=True):
                if reply is None:
                    answer += f"\nworker #{slot.index}: no answer"
        if name == "show info" and not answer.startswith("error:"):
            answer += "\n" + self._workers_info()
        return answer

    async def _per_worker(self, words: list[str]) -> str:
        """Each ready worker's own answer under a `# worker #N` line; an error (the same in
        every worker: they run one configuration) as the usual single `error:` line."""
        live = [s for s in self.slots if s.serving]
        replies = await asyncio.gather(
            *(self._ask(s, "admin", COMMAND_TIMEOUT, words=words) for s in live)
        )
        sections = []
        for slot, reply in zip(live, replies, strict=True):
            text = str(reply.get("answer", "")) if reply is not None else "error: no answer"
            if text.startswith("error:") and reply is not None:
                return text
            sections.append(f"# worker #{slot.index} (pid {slot.pid})\n{text}")
        return "\n".join(sections) if sections else "error: no worker is ready"

    def _workers_info(self) -> str:
        now = time.monotonic()
        lines = [f"Workers: {self.count}", f"Workers_ready: {sum(s.serving for s in self.slots)}"]
        for s in self.slots:
            state = "ready" if s.serving else ("starting" if s.proc is not None else "down")
            up = int(now - s.started) if s.proc is not None else 0
            lines.append(
                f"Worker_{s.index}: pid {s.pid} {state} uptime {up}s restarts {s.restarts}"
            )
        if self.stale:
            lines.append("Stale_in_totals: " + ",".join(f"#{i}" for i in self.stale))
        return "\n".join(lines)

    def clear_counters(self) -> None:
        """The workers own the counters (the fan-out clears them); the master's are totals,
        rebuilt at the next reading: what it kept of earlier readings and exited workers goes."""
        self.retired = None
        self.cleared += 1
        for slot in self.slots:
            slot.last_dump = None
        merge_into(self.runtime, [])

    def status_line(self) -> str:
        rt = self.runtime
        up = sum(1 for s in rt.servers.values() if s.usable())
        ready = sum(1 for s in self.slots if s.serving)
        return (
            f"generation {rt.generation}: {len(self.sockets)} listeners, "
            f"{ready}/{self.count} workers, {up}/{len(rt.servers)} servers usable"
        )
