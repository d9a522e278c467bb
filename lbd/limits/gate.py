"""Frontend `maxconn`: stop accepting at the limit, resume below it.

Rules (HAProxy's frontend maxconn): when a frontend has `maxconn` client connections open, its
listeners stop accepting; new clients wait in the kernel's listen backlog (their SYN completes
there, their request waits) and are accepted as soon as a connection closes. Nothing is
refused while the backlog has room, and no file descriptor is spent on a waiting client.

How, with uvloop: a uvloop server cannot pause accepting, and closing it closes its socket. So
each listener serves a `dup()` of the listening socket: pausing closes the server and its dup,
the original socket stays bound and listening (the backlog keeps filling), and resuming starts
a new server on a new dup. A few connections may already be accepted when the pause lands (an
accept batch); the client closes those beyond the limit at once (`over`), a clean refusal.

TLS: the server accepts plain TCP even for a TLS listener; `ssl_context` is only carried here
for the connection, which runs its admission checks (allow/deny, maxconn, per-source
connections) at accept and only then starts the handshake (lbd.proxy.client), as HAProxy's
`tcp-request connection` rules run before it. Serving with `ssl=` would delay connection_made,
and with it every check, until the handshake finished.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Final

from lbd.stats.counters import FrontendCounters

log = logging.getLogger("lbd.limits")

BACKLOG: Final = 4096  # as bind_socket; uvloop re-listens with its own default (100) otherwise


class PausableServer(asyncio.AbstractServer):
    """One listening socket whose accepting can be paused and resumed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self.ssl_context = ssl_context
        self._server: asyncio.AbstractServer | None = None
        self._want_paused = False
        self._starting = False
        self._closed = False

    async def start(self) -> None:
        await self._open()

    @property
    def paused(self) -> bool:
        return self._want_paused

    def pause(self) -> None:
        """Stop accepting (idempotent): clients queue in the backlog."""
        self._want_paused = True
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def resume(self) -> None:
        """Accept again (idempotent)."""
        self._want_paused = False
        if self._server is None and not self._starting and not self._closed:
            self._starting = True
            self._loop.create_task(self._open())

    async def _open(self) -> None:
        self._starting = True
        try:
            dup = self._sock.dup()
            try:
                # no ssl=: the connection starts TLS itself, once admitted (see above)
                server = await self._loop.create_server(self._factory, sock=dup, backlog=BACKLOG)
            except BaseException:
                dup.close()
                raise
        except OSError as exc:
            if self._sock.fileno() < 0 or self._closed:
                return
            log.error("cannot resume accepting on %s: %s", self._sock.getsockname(), exc)
            raise
        finally:
            self._starting = False
        if self._want_paused or self._closed:  # paused (or closed) while starting
            server.close()
        else:
            self._server = server

    # asyncio.AbstractServer ----------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self.pause()
        if self._sock.fileno() >= 0:
            self._sock.close()

    async def wait_closed(self) -> None:
        return None

    async def start_serving(self) -> None:
        self.resume()

    async def serve_forever(self) -> None:
        raise NotImplementedError("the worker runs its own main loop")

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._server is not None


class ConnGate:
    """The maxconn of one frontend, kept across reloads (like its counters). Listeners join
    the gate when they hand it a connection; at the limit every joined listener pauses."""

    __slots__ = ("maxconn", "servers")

    def __init__(self, maxconn: int) -> None:
        self.maxconn = maxconn
        self.servers: set[PausableServer] = set()

    def opened(self, counters: FrontendCounters, server: PausableServer | None) -> bool:
        """A connection was accepted and counted in `counters.conn_cur`: False when it is over
        the limit (accepted before the pause landed) and must be closed."""
        maxconn = self.maxconn
        if not maxconn:
            return True
        if server is not None:
            self.servers.add(server)
        current = counters.conn_cur
        if current >= maxconn:
            paused = False
            for s in self.servers:
                if not s.paused:
                    s.pause()
                    paused = True
            if paused:
                counters.maxconn_pauses += 1
        if current > maxconn:
            counters.maxconn_refused += 1
            return False
        return True

    def closed(self, counters: FrontendCounters) -> None:
        """A connection closed: below the limit, every paused listener accepts again."""
        servers = self.servers
        if servers and (counters.conn_cur < self.maxconn or not self.maxconn):
            for s in servers:
                if s.paused:
                    s.resume()
            # Listeners re-join with their next connection: a listener that a reload moved to
            # another frontend is not held by this one.
            servers.clear()
