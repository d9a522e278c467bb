"""Server-side TLS on an accepted plain connection, started *inside* connection_made.

Rules:
- A TLS listener accepts plain TCP (lbd.limits.gate) so the accept-time checks run before any
  handshake; the connection then upgrades itself here with `loop.start_tls`.
- The upgrade must begin before connection_made returns: uvloop starts reading right after it,
  and a ClientHello read by the plain protocol would be lost. So the synchronous part of
  start_tls (pause, swap in the TLS protocol, schedule the handshake) runs now, driven by hand
  instead of by a Task that would only start on a later loop turn; bytes read meanwhile go to
  the TLS protocol, which keeps them for the handshake. It also spares a Task per connection.
- `done(transport, None)` is called once the handshake succeeded, `done(None, exc)` when it
  failed, timed out or the client left. The protocol's connection_made is not called again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

Done = Callable[[asyncio.Transport | None, BaseException | None], None]


def start_server_tls(
    loop: asyncio.AbstractEventLoop,
    raw: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    handshake_timeout: float,
    done: Done,
) -> None:
    """Begin the handshake on `raw` now; `done` is called with the outcome."""
    coro = loop.start_tls(
        raw, protocol, context, server_side=True, ssl_handshake_timeout=handshake_timeout
    )
    _step(loop, coro, done)


def _step(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, asyncio.Transport | None],
    done: Done,
) -> None:
    """Run `coro` to its next suspension, as a Task step would."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except (Exception, asyncio.CancelledError) as exc:
        done(None, exc)
        return
    if asyncio.isfuture(waiting):
        waiting.add_done_callback(lambda _: _step(loop, coro, done))
    else:  # a bare yield (asyncio.sleep(0)): resume on the next loop turn
        loop.call_soon(_step, loop, coro, done)
