"""One serving process: binds the listeners, runs the proxy, reloads and stops gracefully.

Rules (after gunicorn's arbiter): signal handlers only set flags or schedule a coroutine; the
main coroutine acts. Reload reads and validates the new file off the event loop first and keeps
the old runtime on any error; listeners whose address stays keep their socket (no connection is
ever refused during a reload), new ones are bound, removed ones closed. A graceful stop closes
the listeners, closes idle keep-alive connections, lets in-flight requests finish for up to
`timeouts.shutdown`, then returns.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from functools import partial

from lbd.config.schema import Address, Config
from lbd.errors import ConfigErrors
from lbd.health.manager import HealthManager
from lbd.logs.access import AccessLog
from lbd.process.systemd import Notifier
from lbd.proxy.client import ConnectionFactory, OpenConnections
from lbd.runtime import Runtime, RuntimeHolder, build_runtime, describe_changes
from lbd.tls.context import load_tls
from lbd.tls.listen import refresh_policies, tls_changes
from lbd.tls.listen import serve as serve_listener

log = logging.getLogger("lbd")


class StartError(Exception):
    """lbd cannot start (a port in use, a permission): exit code 3."""


def bind_socket(address: Address, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartError(f"cannot bind {address}: {why}") from exc
    return sock


class Listener:
    """One bound address. The frontend it serves may change on reload; the socket stays."""

    __slots__ = ("address", "frontend_name", "server")

    def __init__(self, address: Address, frontend_name: str) -> None:
        self.address = address
        self.frontend_name = frontend_name
        self.server: asyncio.AbstractServer | None = None


class Worker:
    def __init__(
        self, config: Config, *, health: HealthManager | None = None, child: bool = False
    ) -> None:
        self.config = config
        # `child`: a worker process under a master (lbd/process/master.py), which owns the
        # admin socket, the stats listener, sd_notify and the listening sockets; `bind` then
        # hands out the sockets the master passed instead of binding.
        self.child = child
        self.bind: Callable[[Address], socket.socket] = bind_socket
        self.holder: RuntimeHolder | None = None
        self.listeners: dict[Address, Listener] = {}
        self.connections = OpenConnections()
        self.access_log: AccessLog | None = None
        self.stop_event = asyncio.Event()
        self.started_at = time.time()
        self._reload_lock = asyncio.Lock()
        self._admin: object | None = None
        self._stats: object | None = None
        self.health = health if health is not None else HealthManager()
        self.notifier = Notifier({} if child else None)  # sd_notify; a no-op outside systemd

    @property
    def runtime(self) -> Runtime:
        assert self.holder is not None
        return self.holder.runtime

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        if not self.child:
            # Before the first listener opens: a SIGTERM that arrives while starting (a test
            # harness, `systemctl stop` right after start) must stop gracefully, not kill.
            self._install_signal_handlers(loop)
        try:
            runtime = build_runtime(cfg, None, loop)  # loads TLS certificates too
        except ConfigErrors as errors:
            raise StartError("\n".join(str(e) for e in errors.errors)) from None
        self.holder = RuntimeHolder(runtime)
        self.health.start(self.holder)  # before listeners: `init_state: down` holds at once
        if cfg.global_.log.access != "off":
            self.access_log = AccessLog(cfg.global_.log.access, cfg.global_.log.format)
            self.holder.runtime.access_log = self.access_log
        await self._open_listeners(cfg)
        if not self.child:
            await self._start_side_servers(cfg)
        # Everything allocated so far lives as long as the process: keep the cyclic GC from
        # rescanning it on every young-generation collection.
        gc.collect()
        gc.freeze()
        self.notifier.ready(self.status_line())
        self.notifier.start_watchdog()

    async def _open_listeners(self, cfg: Config) -> list[str]:
        """Bind addresses that are new in `cfg`; all or nothing (StartError)."""
        wanted = {addr: fe.name for fe in cfg.frontends for addr in fe.bind}
        fresh: list[tuple[Listener, socket.socket]] = []
        try:
            for addr, fe_name in wanted.items():
                if addr not in self.listeners:
                    fresh.append((Listener(addr, fe_name), self.bind(addr)))
        except StartError:
            for _, sock in fresh:
                sock.close()
            raise
        loop = asyncio.get_running_loop()
        holder = self.holder
        assert holder is not None
        for listener, sock in fresh:
            # TLS per the frontend's `tls:`; pausable for the frontend's maxconn (lbd.limits)
            name_of = partial(getattr, listener, "frontend_name")
            factory = self._factory(listener)
            listener.server = await serve_listener(loop, sock, factory, holder, name_of, cfg)
            self.listeners[listener.address] = listener
            log.info("frontend %s listening on %s", listener.frontend_name, listener.address)
        for addr, fe_name in wanted.items():
            self.listeners[addr].frontend_name = fe_name
        return [f"listener added: {listener.address}" for listener, _ in fresh]

    async def _start_side_servers(self, cfg: Config) -> None:
        admin_path = cfg.global_.admin_socket
        if admin_path is not None:
            from lbd.admin.server import AdminServer

            admin = AdminServer(self, admin_path)
            try:
                await admin.start()
            except OSError as exc:
                raise StartError(f"cannot open admin socket {admin_path}: {exc.strerror}") from exc
            self._admin = admin
        await self._start_stats(cfg)

    async def _start_stats(self, cfg: Config) -> None:
        stats = cfg.global_.stats
        if stats is None:
            return
        try:
            from lbd.stats.server import StatsServer
        except ImportError:
            log.warning("stats listener not available in this build")
            return
        assert self.holder is not None
        server = StatsServer(started_at=self.started_at, auth_file=stats.auth_file)
        try:
            await server.start(self.holder, stats.bind)
        except OSError as exc:
            raise StartError(f"stats listener {stats.bind}: {exc.strerror or exc}") from exc
        self._stats = server

    def _factory(self, listener: Listener) -> ConnectionFactory:
        holder = self.holder
        assert holder is not None
        return ConnectionFactory(holder, listener, self.connections)

    # --- run, reload, stop ------------------------------------------------------------------

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)

    async def run_until_stopped(self) -> None:
        await self.stop_event.wait()  # signal handlers were installed by start()
        await self.graceful_stop()

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's postrotate): the access log's writer thread reopens its file."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _reload_from_signal(self) -> None:
        if self.holder is None or self.stop_event.is_set():
            log.warning("reload (SIGHUP) ignored: lbd is still starting or is stopping")
            return

        async def run() -> None:
            ok, report = await self.reload()
            if ok:
                log.info("reload (SIGHUP): %s", report.replace("\n", "; "))

        asyncio.get_running_loop().create_task(run())

    async def reload(self) -> tuple[bool, str]:
        """Re-read the configuration file. (False, errors) leaves everything as it was."""

        async with self._reload_lock:
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what is serving, and how healthy."""
        rt = self.runtime
        up = sum(1 for s in rt.servers.values() if s.usable())
        return (
            f"generation {rt.generation}: {len(self.listeners)} listeners, "
            f"{up}/{len(rt.servers)} servers usable"
        )

    async def _reload(self) -> tuple[bool, str]:
        from lbd.config.load import load_config

        path = self.config.path
        loop = asyncio.get_running_loop()
        try:
            # File I/O and YAML parsing off the loop: requests keep flowing meanwhile.
            new_cfg = await loop.run_in_executor(None, load_config, path)
        except ConfigErrors as errors:
            for err in errors.errors:
                log.error("reload rejected: %s", err)
            return False, "\n".join(str(e) for e in errors.errors)
        return await self.apply_config(new_cfg)

    async def apply_config(self, new_cfg: Config) -> tuple[bool, str]:
        """Swap to an already validated configuration (a child gets it from its master)."""
        loop = asyncio.get_running_loop()
        try:
            # Certificate files are read off the loop; a bad one rejects the reload.
            tls = await loop.run_in_executor(None, load_tls, new_cfg)
        except ConfigErrors as errors:
            for err in errors.errors:
                log.error("reload rejected: %s", err)
            return False, "\n".join(str(e) for e in errors.errors)
        servers = {addr: listener.server for addr, listener in self.listeners.items()}
        if problems := tls_changes(servers, new_cfg):
            for problem in problems:
                log.error("reload rejected: %s", problem)
            return False, "\n".join(problems)
        try:
            added = await self._open_listeners(new_cfg)
        except StartError as exc:
            log.error("reload rejected: %s", exc)
            return False, str(exc)
        old = self.runtime
        new = build_runtime(new_cfg, old, loop, tls)
        log_change = self._swap_access_log(old.config, new_cfg)
        new.access_log = self.access_log
        assert self.holder is not None
        self.holder.runtime = new  # the swap: one assignment
        refresh_policies(servers, new_cfg)  # TLS floor and ciphers of listeners kept
        self.health.reload(old, new)  # same tick: no request sees unconfigured health
        self.config = new_cfg
        removed = self._close_removed_listeners(new_cfg)
        for identity, state in old.servers.items():
            if identity not in new.servers or new.servers[identity] is not state:
                state.pool.close_idle()
        changes = [*added, *removed, *log_change, *describe_changes(old.config, new_cfg)]
        log.info("configuration reloaded (generation %d)", new.generation)
        return True, "\n".join(changes) if changes else "no change"

    def _swap_access_log(self, old: Config, new: Config) -> list[str]:
        """A changed `global.log` gets a new access log. The old one keeps serving requests that
        finish on the old snapshot, then closes (off the loop: closing joins its thread)."""
        before, after = old.global_.log, new.global_.log
        if before == after:
            return []
        previous = self.access_log
        self.access_log = AccessLog(after.access, after.format) if after.access != "off" else None
        if previous is not None:
            loop = asyncio.get_running_loop()
            grace = max((f.timeouts.shutdown for f in new.frontends), default=30.0)
            loop.call_later(grace, lambda: loop.run_in_executor(None, previous.close))
        return [f"access log: {before.access} ({before.format}) -> {after.access} ({after.format})"]

    def _close_removed_listeners(self, cfg: Config) -> list[str]:
        wanted = {addr for fe in cfg.frontends for addr in fe.bind}
        removed = []
        for addr in list(self.listeners):
            if addr not in wanted:
                listener = self.listeners.pop(addr)
                if listener.server is not None:
                    listener.server.close()  # stops accepting; open connections finish
                removed.append(f"listener removed: {addr}")
        return removed

    def clear_counters(self) -> None:
        """Zero every counter in place (exporters keep their references to the objects)."""
        # Not `Counters.__init__(obj)`: on a class compiled by mypyc that call does nothing.
        from lbd.stats.aggregate import zero_counters

        rt = self.runtime
        for fe in rt.frontends.values():
            zero_counters(fe.counters, keep_gauges=True)
            for mc in fe.module_counters.values():
                zero_counters(mc, keep_gauges=True)
            fe.captures.clear()
            fe.module_servers.clear()
        for be in rt.backends.values():
            zero_counters(be.counters, keep_gauges=True)
        for s in rt.servers.values():
            zero_counters(s.counters, keep_gauges=True)

    async def graceful_stop(self) -> None:
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        log.info("stopping: closing listeners, finishing in-flight requests")
        for listener in self.listeners.values():
            if listener.server is not None:
                listener.server.close()
        loop = asyncio.get_running_loop()
        grace = max((f.timeouts.shutdown for f in self.config.frontends), default=30.0)
        deadline = loop.time() + grace
        while self.connections:
            for conn in list(self.connections):
                conn.close_if_idle()
            if loop.time() >= deadline:
                log.warning("shutdown timeout: closing %d connections", len(self.connections))
                for conn in list(self.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
                break
            await asyncio.sleep(0.05)
        await self.health.stop()
        for state in self.runtime.servers.values():
            state.pool.close_idle()
        for side in (self._admin, self._stats):
            stop = getattr(side, "stop", None)
            if stop is not None:
                await stop()
        if self.access_log is not None:
            self.access_log.close()
