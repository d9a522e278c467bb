"""TLS on listeners: the context a listening socket is served with, and what a reload may do.

Rules:
- A listening socket keeps its SSLContext for life; the certificates come from the runtime
  snapshot at each handshake (context.py), so a reload that swaps the snapshot swaps them.
- A reload may not turn an existing listener from plain to TLS or back: the socket would have
  to be re-created, refusing connections meanwhile. Such a reload is rejected with the
  address; moving the frontend to a new address (or restarting) does it.
- Every listener serves through a PausableServer (lbd.limits.gate) so maxconn can pause it.
  It accepts plain TCP; the connection upgrades itself with the listener's context after the
  accept-time checks (lbd.proxy.client), so refused clients never get a handshake.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping

from lbd.config.schema import Address, Config
from lbd.limits.gate import PausableServer
from lbd.runtime import RuntimeHolder
from lbd.tls.context import FrontendTls, apply_policy, listener_context


async def serve(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    factory: Callable[[], asyncio.BaseProtocol],
    holder: RuntimeHolder,
    frontend_of: Callable[[], str],
    cfg: Config,
) -> PausableServer:
    """Start serving a bound socket for the frontend `frontend_of()` names (it may change on
    reload); with TLS when that frontend has `tls:` in `cfg`."""
    server = PausableServer(loop, sock, factory, listener_ssl(holder, frontend_of, cfg))
    await server.start()
    return server


def listener_ssl(
    holder: RuntimeHolder, frontend_of: Callable[[], str], cfg: Config
) -> ssl.SSLContext | None:
    name = frontend_of()
    tls = next((fe.tls for fe in cfg.frontends if fe.name == name), None)
    if tls is None:
        return None

    def current() -> FrontendTls | None:
        fe = holder.runtime.frontends.get(frontend_of())
        return fe.tls if fe is not None else None

    return listener_context(current, tls)


def is_tls(server: asyncio.AbstractServer | None) -> bool:
    return isinstance(server, PausableServer) and server.ssl_context is not None


def tls_changes(servers: Mapping[Address, asyncio.AbstractServer | None], cfg: Config) -> list[str]:
    """Why `cfg` cannot be applied to the listeners open now (empty when it can)."""
    return _flips({address: is_tls(server) for address, server in servers.items()}, cfg)


def config_tls_changes(old: Config, new: Config, bound: Iterable[Address]) -> list[str]:
    """The same verdict from configurations alone, for the `bound` addresses `old` serves (a
    master holds sockets, not servers: it must reject what its workers would)."""
    serving = {address: fe.tls is not None for fe in old.frontends for address in fe.bind}
    return _flips({address: serving[address] for address in bound if address in serving}, new)


def _flips(tls_now: Mapping[Address, bool], cfg: Config) -> list[str]:
    problems = []
    for fe in cfg.frontends:
        for address in fe.bind:
            if address in tls_now and tls_now[address] != (fe.tls is not None):
                now = "TLS" if tls_now[address] else "plain HTTP"
                problems.append(
                    f"frontends.{fe.name}.tls: {address} serves {now} now; adding or removing "
                    "tls on a bound address needs a restart (or a new address)"
                )
    return problems


def refresh_policies(servers: Mapping[Address, asyncio.AbstractServer | None], cfg: Config) -> None:
    """Give TLS listeners the protocol floor and ciphers of `cfg` (after the swap)."""
    for fe in cfg.frontends:
        if fe.tls is None:
            continue
        for address in fe.bind:
            server = servers.get(address)
            if isinstance(server, PausableServer) and server.ssl_context is not None:
                apply_policy(server.ssl_context, fe.tls)
