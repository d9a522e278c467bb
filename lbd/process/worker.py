"""One serving process: binds the listeners, runs the proxy, reloads and stops gracefully.

Rules (after gunicorn's arbiter): signal handlers only set events; the main coroutine acts.
Reload validates the new file first and keeps the old runtime on any error. A graceful stop
closes the listeners, closes idle keep-alive connections, lets in-flight requests finish for up
to `timeouts.shutdown`, then returns.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from lbd.config.schema import Address, Config
from lbd.logs.access import AccessLog
from lbd.proxy.client import ClientConnection
from lbd.runtime import Runtime, RuntimeHolder, build_runtime

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


@dataclass
class Worker:
    config: Config
    holder: RuntimeHolder | None = None
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    connections: set[ClientConnection] = field(default_factory=set)
    access_log: AccessLog | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    reload_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def runtime(self) -> Runtime:
        assert self.holder is not None
        return self.holder.runtime

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.holder = RuntimeHolder(build_runtime(cfg, None, loop))
        if cfg.global_.log.access != "off":
            self.access_log = AccessLog(cfg.global_.log.access, cfg.global_.log.format)
        sockets: list[tuple[str, socket.socket]] = []
        try:
            for fe in cfg.frontends:
                for addr in fe.bind:
                    sockets.append((fe.name, bind_socket(addr)))
        except StartError:
            for _, s in sockets:
                s.close()
            raise
        for fe_name, sock in sockets:
            server = await loop.create_server(self._factory(fe_name), sock=sock)
            self.servers.append(server)
            log.info("frontend %s listening on %s", fe_name, _sockname(sock))
        # Everything allocated so far lives as long as the process: keep the cyclic GC from
        # rescanning it on every young-generation collection.
        gc.collect()
        gc.freeze()

    def _factory(self, frontend_name: str) -> Callable[[], ClientConnection]:
        holder = self.holder
        assert holder is not None
        connections = self.connections
        access_log = self.access_log

        def make() -> ClientConnection:
            conn = _TrackedClient(holder, frontend_name, b"http", access_log)
            conn.registry = connections
            return conn

        return make

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        await self.stop_event.wait()
        await self.graceful_stop()

    async def graceful_stop(self) -> None:
        log.info("stopping: closing listeners, finishing in-flight requests")
        for server in self.servers:
            server.close()
        grace = max((f.timeouts.shutdown for f in self.config.frontends), default=30.0)
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections:
            for conn in list(self.connections):
                conn.close_if_idle()
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("shutdown timeout: closing %d connections", len(self.connections))
                for conn in list(self.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
                break
            await asyncio.sleep(0.05)
        for state in self.runtime.servers.values():
            state.pool.close_idle()
        if self.access_log is not None:
            self.access_log.close()


class _TrackedClient(ClientConnection):
    """A client connection that registers itself so a graceful stop can find it."""

    __slots__ = ("registry",)

    registry: set[ClientConnection]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.registry.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        super().connection_lost(exc)


def _sockname(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
