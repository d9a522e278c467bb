"""Mock EHR backend: an aiohttp application that answers with its name, with knobs for tests.

Rules:
- every response the application produces carries `X-Server: NAME`, error pages included
  (aiohttp's own 404/405/500 too: the header is added when any response is prepared);
- the controls under `/_mock/` change how the other paths behave; they are never delayed, failed
  or counted, so a test can always reach them;
- bodies are streamed in fixed-size chunks and request bodies are hashed while they arrive, so
  memory stays bounded whatever size a benchmark asks for;
- injected errors draw from a `random.Random` seeded per application (from its name unless a
  seed is given), so a run with `errors?rate=0.5` is reproducible.

This module is test and demo tooling: it is never on lbd's request path.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import random
import secrets
import signal
import sys
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.typedefs import Handler

X_SERVER = "X-Server"

# The EHR modules; a path belongs to one when its first segment is the module name.
MODULES = ("accueil", "rendez-vous", "comptes-rendus", "dmu", "static")
OTHER = "other"

# Methods each module answers (HEAD comes with GET); anything else gets aiohttp's 405.
_MODULE_METHODS: dict[str, tuple[str, ...]] = {
    "accueil": ("GET",),
    "rendez-vous": ("GET", "POST", "PUT", "DELETE"),
    "comptes-rendus": ("GET", "POST", "PUT"),
    "dmu": ("GET", "POST"),
}

_CONTROL_PREFIX = "/_mock/"

# Bounds on query knobs: generous for benchmarks, small enough that a typo cannot wedge a run.
_MAX_BYTES = 1 << 34  # 16 GiB, streamed
_MAX_MS = 600_000  # 10 minutes

# 64 KiB of a known pattern: streamed bodies repeat it, so a test can predict every byte.
PATTERN = bytes(range(256)) * 256

# aiohttp's parser defaults (8190-byte lines, 128 headers) are stricter than lbd's own limits
# (8 KiB URIs, 32 KiB header sections); the mock must never be the one that refuses.
_PARSER_LIMITS: dict[str, Any] = {
    "max_line_size": 65536,
    "max_field_size": 65536,
    "max_headers": 1024,
    "auto_decompress": False,  # /echo hashes the body bytes as they were sent
}
_SHUTDOWN_GRACE_S = 2.0  # in-flight requests get this long after SIGTERM

_STATIC_TYPES = {
    "css": "text/css",
    "js": "text/javascript",
    "png": "image/png",
    "svg": "image/svg+xml",
    "ico": "image/x-icon",
    "html": "text/html",
    "json": "application/json",
}


# --- state -----------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What the controls set; `reset` replaces it with a fresh instance."""

    health_status: int = 200
    latency_ms: int = 0
    module_latency_ms: dict[str, int] = field(default_factory=dict)
    error_rate: float = 0.0
    module_error_rate: dict[str, float] = field(default_factory=dict)

    def delay_ms(self, module: str) -> int:
        """A module's own latency wins over the global one."""
        return self.module_latency_ms.get(module, self.latency_ms)

    def fail_rate(self, module: str) -> float:
        """Only module paths fail; a module's own rate wins over the global one."""
        if module not in MODULES:
            return 0.0
        return self.module_error_rate.get(module, self.error_rate)


@dataclass
class Counters:
    """Requests seen outside `/_mock/`, for tests that count which server got what."""

    requests_total: int = 0
    health_checks: int = 0
    in_flight: int = 0
    modules: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*MODULES, OTHER), 0))
    statuses: dict[str, int] = field(default_factory=dict)

    def note_status(self, status: int) -> None:
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1


@dataclass
class MockState:
    """Everything one mock server knows; lives in the application, never in a global."""

    name: str
    seed: int
    behaviour: Behaviour = field(default_factory=Behaviour)
    counters: Counters = field(default_factory=Counters)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def reset(self) -> None:
        """Back to normal: default behaviour, zeroed counters, the random sequence restarted."""
        in_flight = self.counters.in_flight  # requests still running will decrement it
        self.behaviour = Behaviour()
        self.counters = Counters(in_flight=in_flight)
        self.rng = random.Random(self.seed)

    def should_fail(self, module: str) -> bool:
        rate = self.behaviour.fail_rate(module)
        return rate > 0.0 and self.rng.random() < rate

    def describe(self) -> dict[str, Any]:
        b = self.behaviour
        return {
            "server": self.name,
            "health_status": b.health_status,
            "latency_ms": b.latency_ms,
            "module_latency_ms": dict(b.module_latency_ms),
            "error_rate": b.error_rate,
            "module_error_rate": dict(b.module_error_rate),
            "seed": self.seed,
        }

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "server": self.name,
            "requests_total": c.requests_total,
            "health_checks": c.health_checks,
            "in_flight": c.in_flight,
            "modules": dict(c.modules),
            "statuses": dict(c.statuses),
        }


STATE = web.AppKey("lbd_mock_state", MockState)


def classify(path: str) -> str:
    """The module a path belongs to: its first segment if that names a module, else `other`."""
    first = path.lstrip("/").split("/", 1)[0]
    return first if first in MODULES else OTHER


# --- query helpers ---------------------------------------------------------------------------


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n")


def _int_query(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise _bad_request(f"{key} must be between {low} and {high}, got {value}")
    return value


def _rate_query(request: web.Request) -> float:
    raw = request.query.get("rate", "0")
    try:
        rate = float(raw)
    except ValueError:
        raise _bad_request(f"rate must be a number, got {raw!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise _bad_request(f"rate must be between 0 and 1, got {rate}")
    return rate


def _module_query(request: web.Request) -> str | None:
    module = request.query.get("module")
    if module is not None and module not in MODULES:
        raise _bad_request(f"module must be one of {', '.join(MODULES)}, got {module!r}")
    return module


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data) + "\n", content_type="application/json"
    )


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


async def _drain_body(request: web.Request) -> tuple[int, str]:
    """Read the whole request body in chunks; return its length and sha256, never keep it."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


async def _stream_pattern(request: web.Request, size: int, content_type: str) -> web.StreamResponse:
    """Answer `size` bytes of PATTERN with a Content-Length, one chunk at a time."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = size
    await response.prepare(request)
    if request.method != "HEAD":
        chunk = memoryview(PATTERN)
        full, rest = divmod(size, len(PATTERN))
        for _ in range(full):
            await response.write(chunk)
        if rest:
            await response.write(chunk[:rest])
    await response.write_eof()
    return response


# --- middleware and signal -------------------------------------------------------------------


async def _add_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # A signal rather than a middleware: it also sees streamed responses (headers already sent
    # when a middleware gets them back) and the 404/405/500 pages aiohttp builds itself.
    response.headers[X_SERVER] = request.app[STATE].name


@web.middleware
async def _behaviour(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, apply injected latency and errors, then run the handler."""
    if request.path.startswith(_CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE]
    module = classify(request.path)
    _note_request(state.counters, request.path, module)
    state.counters.in_flight += 1
    status = 500  # what aiohttp answers if the handler raises something else
    try:
        delay = state.behaviour.delay_ms(module)
        if delay:
            await asyncio.sleep(delay / 1000)
        if state.should_fail(module):
            response: web.StreamResponse = web.Response(status=500, text="injected error\n")
        else:
            response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # Counters may have been replaced by a reset meanwhile: read them again.
        state.counters.in_flight -= 1
        state.counters.note_status(status)


def _note_request(counters: Counters, path: str, module: str) -> None:
    counters.requests_total += 1
    counters.modules[module] += 1
    if path == "/health":
        counters.health_checks += 1


# --- EHR paths -------------------------------------------------------------------------------


async def _module_page(request: web.Request) -> web.Response:
    """A small page naming the server and the module; POST/PUT bodies are read and hashed."""
    name = request.app[STATE].name
    module = classify(request.path)
    data: dict[str, Any] = {
        "server": name,
        "module": module,
        "method": request.method,
        "path": request.path,
    }
    if request.method in ("POST", "PUT", "DELETE"):
        data["body_length"], data["body_sha256"] = await _drain_body(request)
    if _wants_json(request):
        return _json(data)
    body = (
        f"<!doctype html>\n<html><head><title>{html.escape(module)} — {html.escape(name)}"
        f"</title></head>\n<body><h1>{html.escape(module)}</h1>\n"
        f"<p>Served by <b>{html.escape(name)}</b>: {html.escape(request.method)} "
        f"{html.escape(request.path)}</p></body></html>\n"
    )
    return web.Response(text=body, content_type="text/html")


def _fake_static(name: str, extension: str) -> bytes:
    """A few recognisable bytes of the right kind, naming the server."""
    if extension == "css":
        return f"/* {name} */\nbody {{ font-family: sans-serif; }}\n".encode()
    if extension == "js":
        return f"console.log({json.dumps('served by ' + name)});\n".encode()
    if extension == "png":
        return b"\x89PNG\r\n\x1a\n" + f"fake png from {name}".encode()
    if extension == "svg":
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="20">'
            f'<text y="15">{html.escape(name)}</text></svg>\n'
        ).encode()
    return f"static file from {name}\n".encode()


async def _static(request: web.Request) -> web.StreamResponse:
    """Fake assets typed by extension; `?size=N` streams exactly N bytes instead."""
    extension = request.path.rsplit(".", 1)[-1].lower() if "." in request.path else ""
    content_type = _STATIC_TYPES.get(extension, "application/octet-stream")
    if "size" in request.query:
        size = _int_query(request, "size", 0, 0, _MAX_BYTES)
        return await _stream_pattern(request, size, content_type)
    body = _fake_static(request.app[STATE].name, extension)
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


async def _login(request: web.Request) -> web.Response:
    """Open a fake session: a random opaque JSESSIONID, as a Java EHR would."""
    if request.method == "POST":
        await _drain_body(request)
    name = request.app[STATE].name
    response = _json({"server": name, "logged_in": True})
    response.set_cookie("JSESSIONID", secrets.token_hex(16), path="/", httponly=True)
    return response


async def _health(request: web.Request) -> web.Response:
    status = request.app[STATE].behaviour.health_status
    text = "OK" if status == 200 else f"{status} unhealthy\n"
    return web.Response(status=status, text=text)


async def _echo(request: web.Request) -> web.Response:
    """Describe the request exactly as it arrived (raw target, headers in order and case)."""
    length, sha256 = await _drain_body(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return _json(
        {
            "server": request.app[STATE].name,
            "method": request.method,
            "target": request.raw_path,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": length,
            "body_sha256": sha256,
            "peer": list(peer[:2]) if peer else None,
        }
    )


async def _bytes(request: web.Request) -> web.StreamResponse:
    size = _int_query(request, "n", 0, 0, _MAX_BYTES)
    return await _stream_pattern(request, size, "application/octet-stream")


async def _status(request: web.Request) -> web.Response:
    """Answer the asked status; 204 and 304 carry no body, as HTTP requires."""
    code = _int_query(request, "code", 200, 200, 599)
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}\n")


async def _slow(request: web.Request) -> web.Response:
    ms = _int_query(request, "ms", 0, 0, _MAX_MS)
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


# --- controls --------------------------------------------------------------------------------


async def _control_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.behaviour.health_status = _int_query(request, "status", 200, 200, 599)
    return _json(state.describe())


async def _control_latency(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ms = _int_query(request, "ms", 0, 0, _MAX_MS)
    module = _module_query(request)
    if module is None:
        state.behaviour.latency_ms = ms
    elif ms:
        state.behaviour.module_latency_ms[module] = ms
    else:
        state.behaviour.module_latency_ms.pop(module, None)
    return _json(state.describe())


async def _control_errors(request: web.Request) -> web.Response:
    state = request.app[STATE]
    rate = _rate_query(request)
    module = _module_query(request)
    if "seed" in request.query:
        state.seed = _int_query(request, "seed", 0, 0, 2**63)
        state.rng = random.Random(state.seed)
    if module is None:
        state.behaviour.error_rate = rate
    else:
        state.behaviour.module_error_rate[module] = rate
    return _json(state.describe())


async def _control_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return _json(state.describe())


async def _control_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats())


# --- assembly --------------------------------------------------------------------------------

_RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _add_any(app: web.Application, path: str, handler: _RouteHandler) -> None:
    app.router.add_route("*", path, handler)


def _add_methods(
    app: web.Application, paths: tuple[str, ...], methods: tuple[str, ...], handler: _RouteHandler
) -> None:
    for path in paths:
        for method in methods:
            if method == "GET":
                app.router.add_get(path, handler)  # adds HEAD too
            else:
                app.router.add_route(method, path, handler)


def build_app(name: str, *, seed: int | None = None) -> web.Application:
    """The mock EHR application for server NAME (see the module banner for its rules)."""
    app = web.Application(middlewares=[_behaviour])
    app[STATE] = MockState(name=name, seed=zlib.crc32(name.encode()) if seed is None else seed)
    app.on_response_prepare.append(_add_server_header)

    for module, methods in _MODULE_METHODS.items():
        _add_methods(app, (f"/{module}", f"/{module}/{{tail:.*}}"), methods, _module_page)
    _add_methods(app, ("/static/{tail:.*}",), ("GET",), _static)
    _add_methods(app, ("/login",), ("GET", "POST"), _login)
    _add_methods(app, ("/health",), ("GET",), _health)
    _add_methods(app, ("/bytes",), ("GET",), _bytes)
    _add_any(app, "/echo", _echo)
    _add_any(app, "/echo/{tail:.*}", _echo)
    _add_any(app, "/status", _status)
    _add_any(app, "/slow", _slow)

    _add_any(app, "/_mock/health", _control_health)
    _add_any(app, "/_mock/latency", _control_latency)
    _add_any(app, "/_mock/errors", _control_errors)
    _add_any(app, "/_mock/reset", _control_reset)
    _add_any(app, "/_mock/stats", _control_stats)
    return app


# --- serving ---------------------------------------------------------------------------------


@dataclass
class RunningMock:
    """A started mock: where it listens, its state, and how to stop it."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def state(self) -> MockState:
        return self.runner.app[STATE]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_mock(name: str, host: str, port: int, *, seed: int | None = None) -> RunningMock:
    """Listen on HOST:PORT (0 picks a free port); raises OSError when it cannot bind."""
    runner = web.AppRunner(
        build_app(name, seed=seed),
        access_log=None,  # a benchmark backend must not spend its time logging
        shutdown_timeout=_SHUTDOWN_GRACE_S,
        **_PARSER_LIMITS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return RunningMock(runner=runner, host=host, port=bound_port)


async def serve_mock(
    name: str, host: str, port: int, *, ready: Callable[[RunningMock], None] | None = None
) -> None:
    """Serve until cancelled; `ready` is called once the socket listens."""
    mock = await start_mock(name, host, port)
    try:
        if ready is not None:
            ready(mock)
        await asyncio.Future()  # forever: only cancellation ends it
    finally:
        await mock.close()


async def _run_until_signal(name: str, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        mock = await start_mock(name, host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"lbd mock {name}: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 3
    print(f"mock {name} listening on {mock.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await mock.close()
    return 0


def mock_main(name: str, host: str, port: int) -> int:
    """Blocking `lbd mock`: 0 after SIGTERM/SIGINT, 2 on a bad port, 3 if it cannot bind."""
    if not 0 <= port <= 65535:
        print(f"lbd mock {name}: port must be between 0 and 65535, got {port}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_until_signal(name, host, port))
