"""Active health checks: one task per checked server, probing it on the event loop.

Rules:
- Checks never use the proxy's connection pool: each probe opens its own connection and closes
  it (`Connection: close`), so a check sees what a new client connection would see and never
  steals or poisons a pooled connection.
- `type: tcp` passes when the connection opens. `type: http` sends one request (method, path,
  Host: the configured host, else the server's address) and reads the status line, the
  headers and, only when `expect_body` is set, up to BODY_LIMIT bytes of (de-chunked) body;
  it passes when the status is in `expect_status` and the body holds `expect_body`.
- One timeout (`timeout`, default `interval`) bounds the whole probe; when it fires during the
  connect the result is Layer4 timeout, after it Layer7 timeout (HAProxy's L4TOUT / L7TOUT).
- Scheduling (HAProxy's srv_getinter): `interval` while UP, `fastinterval` while GOING_UP or
  GOING_DOWN, `downinterval` while DOWN, each counted from the end of the previous check and
  spread by ±JITTER so checks of many servers do not fire together; the very first check comes
  at a random point of the first interval (HAProxy spreads its first checks the same way).
  A passive `on-error` may ask for an early check: the pending wait is cut to `fastinterval`
  (default `interval`) from now when that is sooner, as HAProxy's health_adjust does.
- Results go to the server's one rise/fall machine (`server.health.record`). Checks keep
  running whatever the admin state (a server in MAINT is still checked, so its health is known
  when the operator puts it back); they stop only with the task (`stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
from collections.abc import Callable

import httptools

from lbd.config.schema import Address, HealthCheck
from lbd.health.state import CheckResult, HealthState, Op
from lbd.state import ServerState

log = logging.getLogger("lbd.health")

JITTER = 0.10  # each wait is the interval × uniform(1 - JITTER, 1 + JITTER)
HEAD_LIMIT = 16 * 1024  # status line + headers of a check response (HAProxy: tune.bufsize)
BODY_LIMIT = 64 * 1024  # body bytes searched for `expect_body`
USER_AGENT = "lbd-health-check"


# --- scheduling (pure) ---------------------------------------------------------------------------


def check_timeout(check: HealthCheck) -> float:
    return check.timeout if check.timeout is not None else check.interval


def next_interval(check: HealthCheck, health: HealthState) -> float:
    """The wait before the next check, by operational state (before jitter)."""
    op = health.op
    if op is Op.UP:
        return check.interval
    if op is Op.DOWN:
        return check.downinterval if check.downinterval is not None else check.interval
    return check.fastinterval if check.fastinterval is not None else check.interval


def jittered(delay: float, rng: random.Random) -> float:
    return delay * rng.uniform(1.0 - JITTER, 1.0 + JITTER)


# --- probes --------------------------------------------------------------------------------------


def _os_error_info(exc: OSError) -> str:
    """`Connection refused` rather than `[Errno 111] Connect call failed ('127.0.0.1', 1)`."""
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


async def probe(
    address: Address,
    check: HealthCheck,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> CheckResult:
    """Run one check against `address`; never raises (except CancelledError). A server with
    `tls:` is checked over TLS (HAProxy's `check-ssl`): the handshake is part of layer 4."""
    sni = server_hostname if tls is not None else None
    loop = asyncio.get_running_loop()
    start = loop.time()
    connected = False
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(check_timeout(check)):
            if check.type == "tcp":
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, address.host, address.port, ssl=tls, server_hostname=sni
                )
                return CheckResult(True, "L4OK", duration=loop.time() - start)
            reader, writer = await asyncio.open_connection(
                address.host, address.port, limit=HEAD_LIMIT, ssl=tls, server_hostname=sni
            )
            transport = writer.transport
            connected = True
            writer.write(_request_bytes(address, check))
            return await _read_response(reader, check, lambda: loop.time() - start)
    except TimeoutError:
        status = "L7TOUT" if connected else "L4TOUT"
        return CheckResult(False, status, duration=loop.time() - start)
    except OSError as exc:
        info = _os_error_info(exc)
        if connected:
            return CheckResult(False, "L7RSP", info=info, duration=loop.time() - start)
        return CheckResult(False, "L4CON", info=info, duration=loop.time() - start)
    finally:
        if transport is not None:
            transport.close()


def _request_bytes(address: Address, check: HealthCheck) -> bytes:
    host = check.host if check.host is not None else str(address)
    return (
        f"{check.method} {check.path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


class _Response:
    """httptools callbacks: keep only what a check looks at."""

    __slots__ = ("body", "complete", "head_done")

    def __init__(self) -> None:
        self.head_done = False
        self.complete = False
        self.body = bytearray()

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        room = BODY_LIMIT - len(self.body)
        if room > 0:
            self.body += data[:room]

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_response(
    reader: asyncio.StreamReader, check: HealthCheck, elapsed: Callable[[], float]
) -> CheckResult:
    """Read until the check can decide: the head (and, with `expect_body`, the body up to the
    text, BODY_LIMIT, the end of the message or EOF)."""
    resp = _Response()
    parser = httptools.HttpResponseParser(resp)
    want = check.expect_body.encode() if check.expect_body is not None else None
    seen = 0
    while True:
        data = await reader.read(65536)
        if data:
            seen += len(data)
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if not resp.head_done:
                    info = f"bad response: {exc}"
                    return CheckResult(False, "L7RSP", info=info, duration=elapsed())
                # A body the parser refuses after a good head: judge on what arrived.
                resp.complete = True
            if not resp.head_done and seen > HEAD_LIMIT:
                info = "response head too large"
                return CheckResult(False, "L7RSP", info=info, duration=elapsed())
        elif not resp.head_done:
            info = "empty response" if seen == 0 else "truncated response"
            return CheckResult(False, "L7RSP", info=info, duration=elapsed())
        if resp.head_done:
            body_done = (
                want is None
                or check.method == "HEAD"
                or resp.complete
                or not data
                or want in resp.body
                or len(resp.body) >= BODY_LIMIT
            )
            if body_done:
                break
    code = int(parser.get_status_code())
    if code not in check.expect_status:
        return CheckResult(False, "L7STS", code=code, duration=elapsed())
    if want is not None and want not in resp.body:
        info = f"expected text {check.expect_body!r} not found in the body"
        return CheckResult(False, "L7RSP", code=code, info=info, duration=elapsed())
    return CheckResult(True, "L7OK", code=code, duration=elapsed())


# --- the per-server task -------------------------------------------------------------------------


class Checker:
    """Checks one server with one configuration until stopped."""

    __slots__ = ("_rng", "_task", "_wake", "check", "server")

    def __init__(self, server: ServerState, check: HealthCheck, rng: random.Random) -> None:
        self.server = server
        self.check = check
        self._rng = rng
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.server.health.wake = self._wake.set
        name = f"health check {self.server.backend_name}/{self.server.name}"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the task; returns it so the caller may await its end."""
        health = self.server.health
        if health.wake == self._wake.set:
            health.wake = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def _run(self) -> None:
        check = self.check
        server = self.server
        rng = self._rng
        delay = rng.uniform(0.0, check.interval)  # spread first checks over one interval
        while True:
            await self._sleep(delay)
            try:
                pool = server.pool
                result = await probe(server.config.address, check, pool.ssl, pool.server_hostname)
                server.health.record(result)
            except Exception:  # a bug here must not stop checking this server for good
                log.exception("health check of %s/%s failed", server.backend_name, server.name)
            delay = jittered(next_interval(check, server.health), rng)

    async def _sleep(self, delay: float) -> None:
        """Wait `delay`, cut to `fastinterval` (default: `interval`) from now when an early
        check is requested."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        check = self.check
        fast = check.fastinterval if check.fastinterval is not None else check.interval
        wake = self._wake
        wake.clear()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except TimeoutError:
                return
            wake.clear()
            deadline = min(deadline, loop.time() + fast)


async def stop_all(tasks: list[asyncio.Task[None]]) -> None:
    """Await cancelled checker tasks (bounded: a probe ends at its own timeout anyway)."""
    tasks = [t for t in tasks if not t.done()]
    if tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(tasks, timeout=5.0)
