"""Idle keep-alive connections to one server.

Rules: bounded (`max_idle` per server; extra connections are closed), LIFO (the most recently
used connection is the least likely to have been closed by the server), and each idle
connection closes itself after `idle_timeout` — kept below common server keep-alive timeouts
(nginx 75 s, Tomcat 20–60 s) to make the reuse-after-server-close race rare. A connection the
server closed while idle removes itself (`forget`). The pool belongs to the server's identity,
so a reload keeps it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast

from lbd.config.schema import Address
from lbd.proxy.upstream import UpstreamConnection


class ConnPool:
    __slots__ = ("_idle", "address", "idle_timeout", "loop", "max_idle", "server_hostname", "ssl")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: Address,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        self.loop = loop
        self.address = address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: list[UpstreamConnection] = []
        # TLS to the server (`tls:` on it): set by build_runtime, None for plain HTTP.
        self.ssl: ssl.SSLContext | None = None
        self.server_hostname: str | None = None

    def acquire(self) -> UpstreamConnection | None:
        """An idle connection that still looks alive, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose exchange is completely done."""
        conn.exchange = None
        if conn.closed:
            return
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.reused = True
        conn.deadline.set(self.idle_timeout)
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError."""
        loop = self.loop
        # uvloop and asyncio both set TCP_NODELAY on new TCP transports already. With TLS the
        # timeout covers the handshake too (HAProxy's `timeout connect` does not; close enough).
        tls = self.ssl
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: UpstreamConnection(loop, self),
                self.address.host,
                self.address.port,
                ssl=tls,
                server_hostname=self.server_hostname if tls is not None else None,
            ),
            timeout,
        )
        return proto

    def close_idle(self) -> None:
        """Close every idle connection (server removed or lbd stopping)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def idle_count(self) -> int:
        return len(self._idle)


def idle_pool(address: Address) -> ConnPool:
    """A pool that never connects (no event loop): for ServerStates built outside a runtime,
    by the balancer benches and tests."""
    return ConnPool(cast(asyncio.AbstractEventLoop, None), address, 0, 0.0)
