"""The stats listener: /metrics, /stats, /stats.json, /stats.csv (and / → /stats).

Rules: aiohttp serves this listener only, never the data path. Every request reads
`holder.runtime` once, so a reload shows up on the next request. The server owns its
RateTracker (req/s between two readings) and its private Prometheus registry: nothing here is
module-global, so two workers or two tests never share state. Binding happens in `start()` and
fails with OSError (the worker turns it into exit code 3).

With `auth_file` (required by the config loader for a non-loopback bind) every path asks for
HTTP Basic credentials checked against an htpasswd file read once at start. Supported hashes:
`{SHA}` (htpasswd -s) and `$apr1$` (htpasswd -m, its default); any other line is refused at
start rather than silently never matching. Hashes are checked off the event loop (apr1 is a
thousand MD5 rounds) and a header that passed once is remembered, so scrapes stay cheap.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from lbd.config.schema import Address
from lbd.runtime import RuntimeHolder
from lbd.stats import csv as stats_csv
from lbd.stats import html as stats_html
from lbd.stats.prometheus import make_registry, render
from lbd.stats.snapshot import RateTracker, Snapshot, snapshot

log = logging.getLogger("lbd.stats")

# Everything here is live data: no cache may keep it; no page may be framed or sniffed.
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The page has inline CSS and nothing else: forbid every other kind of content.
HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
REALM = 'Basic realm="lbd stats", charset="UTF-8"'
SHUTDOWN_TIMEOUT = 1.0  # a scrape in progress at stop: not worth delaying the shutdown for
AUTH_CACHE_SIZE = 64  # Authorization headers remembered as valid (a few scrapers and browsers)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StatsServer:
    """The stats HTTP listener of one worker."""

    def __init__(
        self,
        started_at: float | None = None,
        auth_file: str | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.started_at = time.time() if started_at is None else started_at
        self.auth_file = auth_file
        # A master's: make the runtime's counters the totals over its workers before rendering.
        self.refresh = refresh
        self.tracker = RateTracker()
        self.address: tuple[str, int] | None = None  # what was bound (port 0 resolved)
        self._holder: RuntimeHolder | None = None
        self._registry: CollectorRegistry | None = None
        self._runner: web.AppRunner | None = None
        self._users: dict[str, str] | None = None
        self._valid_auth: set[bytes] = set()

    async def start(self, holder: RuntimeHolder, bind: Address) -> None:
        """Bind and serve; raises OSError when the address or the auth file is unusable."""
        self._holder = holder
        self._registry = make_registry(holder, self.started_at)
        if self.auth_file is not None:
            self._users = await asyncio.to_thread(load_htpasswd, self.auth_file)
        sock = listen_socket(bind)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        log.info("stats listening on %s", bind)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- routes ---------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        middlewares = [self._auth_middleware] if self._users is not None else []
        if self.refresh is not None:
            middlewares.append(self._refresh_middleware)
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/", self._root)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._html)
        app.router.add_get("/stats.json", self._json)
        app.router.add_get("/stats.csv", self._csv)
        app.on_response_prepare.append(_hide_server_software)
        return app

    def snapshot(self) -> Snapshot:
        assert self._holder is not None
        return snapshot(self._holder.runtime, self.started_at, self.tracker)

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/stats", headers=COMMON_HEADERS)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._registry is not None
        body = render(self._registry)
        return _response(body, CONTENT_TYPE_LATEST)

    async def _html(self, request: web.Request) -> web.StreamResponse:
        body = stats_html.render(self.snapshot()).encode()
        response = _response(body, "text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = HTML_CSP
        return response

    async def _json(self, request: web.Request) -> web.StreamResponse:
        body = json.dumps(self.snapshot()).encode()
        return _response(body, "application/json")

    async def _csv(self, request: web.Request) -> web.StreamResponse:
        # text/plain as HAProxy serves its CSV: readable in a browser, parsed the same by tools.
        body = stats_csv.render(self.snapshot()).encode()
        return _response(body, "text/plain; charset=utf-8")

    # --- authentication ---------------------------------------------------------------------------

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        # Remember a digest, not the header: no password sits in memory longer than a request.
        key = hashlib.sha256(header.encode()).digest()
        if key not in self._valid_auth:
            if not await asyncio.to_thread(self._check, header):
                raise web.HTTPUnauthorized(headers={**COMMON_HEADERS, "WWW-Authenticate": REALM})
            if len(self._valid_auth) >= AUTH_CACHE_SIZE:
                self._valid_auth.clear()
            self._valid_auth.add(key)
        return await handler(request)

    @web.middleware
    async def _refresh_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        # After authentication: an anonymous request must not cost a round of worker dumps.
        assert self.refresh is not None
        await self.refresh()
        return await handler(request)

    def _check(self, header: str) -> bool:
        assert self._users is not None
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        return stored is not None and verify_password(password, stored)


def _response(body: bytes, content_type: str) -> web.Response:
    # Content-Type through headers: aiohttp's content_type= refuses parameters like version=.
    return web.Response(body=body, headers={**COMMON_HEADERS, "Content-Type": content_type})


def listen_socket(bind: Address, backlog: int = 128) -> socket.socket:
    """A listening socket on `bind`; the OSError of a failed bind as is (errno, strerror): the
    worker names the address in its message."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# --- htpasswd -------------------------------------------------------------------------------------


async def _hide_server_software(_request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp announces `Server: Python/x aiohttp/y`: versions only help an attacker."""
    response.headers.popall("Server", None)


def load_htpasswd(path: str) -> dict[str, str]:
    """user → stored hash. OSError for an unreadable file or a hash format lbd cannot check."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read auth_file {path}: {exc.strerror}") from exc
    users: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith(("{SHA}", "$apr1$")):
            why = "expected USER:{SHA}… or USER:$apr1$… (htpasswd -s or -m)"
            raise OSError(errno.EINVAL, f"{path}:{lineno}: {why}")
        users[user] = stored
    if not users:
        raise OSError(errno.EINVAL, f"{path}: no users: nobody could read the stats")
    return users


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def verify_password(password: str, stored: str) -> bool:
    pw = password.encode()
    if stored.startswith("{SHA}"):
        computed = "{SHA}" + base64.b64encode(hashlib.sha1(pw).digest()).decode()
    elif stored.startswith("$apr1$"):
        salt = stored[len("$apr1$") :].split("$", 1)[0]
        computed = apr1(pw, salt.encode())
    else:
        return False
    return hmac.compare_digest(computed.encode(), stored.encode())


_ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def apr1(password: bytes, salt: bytes) -> str:
    """Apache's MD5-crypt variant (`$apr1$`), after apr_md5.c: the FreeBSD MD5-crypt
    algorithm with another magic string. The constants (1000 rounds, the 3/7 pattern, the
    byte shuffle) are the algorithm's, not tunable."""
    magic = b"$apr1$"
    salt = salt[:8]
    alt = hashlib.md5(password + salt + password).digest()
    ctx = password + magic + salt
    for n in range(len(password), 0, -16):
        ctx += alt[: min(16, n)]
    n = len(password)
    while n:
        ctx += b"\0" if n & 1 else password[:1]
        n >>= 1
    final = hashlib.md5(ctx).digest()
    for i in range(1000):
        round_ = (password if i & 1 else final) + (salt if i % 3 else b"")
        round_ += (password if i % 7 else b"") + (final if i & 1 else password)
        final = hashlib.md5(round_).digest()
    return f"$apr1${salt.decode()}${_md5_crypt_b64(final)}"


def _md5_crypt_b64(final: bytes) -> str:
    out = bytearray()
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        out += _to64((final[a] << 16) | (final[b] << 8) | final[c], 4)
    out += _to64(final[11], 2)
    return out.decode()


def _to64(value: int, chars: int) -> bytes:
    out = bytearray()
    for _ in range(chars):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return bytes(out)
