"""The mock EHR backend: every path and control against a real server on an ephemeral port.

Timing assertions only ever bound a delay from below; "not delayed" is checked against a latency
far larger than the client's timeout, so a loaded machine cannot make these tests flaky.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lbd.mock.app import MODULES, PATTERN, RunningMock, build_app, classify, start_mock

REPO = Path(__file__).resolve().parents[1]
NAME = "m1"
MODULE_PATHS = ["/accueil/", "/rendez-vous/42", "/comptes-rendus/cr/7", "/dmu/", "/static/a.css"]
PLAIN_PATHS = ["/health", "/echo", "/login", "/bytes?n=3", "/status?code=201", "/slow?ms=1"]

try:
    import lbd.cli  # noqa: F401

    CLI_MISSING = ""
except ImportError as exc:
    CLI_MISSING = f"lbd.cli does not import yet ({exc}); the lead removes this skip"


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    running = await start_mock(NAME, "127.0.0.1", 0)
    yield running
    await running.close()


@pytest.fixture
async def client(mock: RunningMock) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=mock.url) as session:
        yield session


async def get_json(client: aiohttp.ClientSession, path: str) -> Any:
    async with client.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def status_of(client: aiohttp.ClientSession, path: str, method: str = "GET") -> int:
    async with client.request(method, path) as resp:
        await resp.read()
        return resp.status


# --- X-Server and the paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/accueil/", 200),
        ("GET", "/accueil", 200),
        ("HEAD", "/dmu/urgences", 200),
        ("GET", "/rendez-vous/12", 200),
        ("POST", "/comptes-rendus/", 200),
        ("GET", "/static/app.css", 200),
        ("GET", "/static/big.js?size=100000", 200),
        ("GET", "/login", 200),
        ("GET", "/health", 200),
        ("PATCH", "/echo", 200),
        ("GET", "/bytes?n=10", 200),
        ("GET", "/status?code=503", 503),
        ("GET", "/slow?ms=1", 200),
        ("GET", "/nope", 404),
        ("GET", "/accueilx", 404),
        ("DELETE", "/accueil/", 405),
        ("GET", "/bytes?n=many", 400),
        ("GET", "/_mock/stats", 200),
        ("GET", "/_mock/latency?ms=-1", 400),
    ],
)
async def test_x_server_on_every_response(
    client: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with client.request(method, path) as resp:
        await resp.read()
        assert resp.status == status
        assert resp.headers["X-Server"] == NAME


async def test_x_server_on_unhandled_exception() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = build_app("m2")
    app.router.add_get("/boom", boom)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/boom")) as resp,
    ):
        assert resp.status == 500
        assert resp.headers["X-Server"] == "m2"


def test_classify() -> None:
    assert classify("/accueil") == "accueil"
    assert classify("/comptes-rendus/x/y") == "comptes-rendus"
    assert classify("/static/a.png") == "static"
    assert classify("/accueilx") == "other"
    assert classify("/health") == "other"
    assert classify("/") == "other"


@pytest.mark.parametrize("path", MODULE_PATHS[:4])
async def test_module_page_names_server_and_module(
    client: aiohttp.ClientSession, path: str
) -> None:
    module = path.split("/")[1]
    async with client.get(path) as resp:
        assert resp.content_type == "text/html"
        text = await resp.text()
    assert NAME in text
    assert module in text
    data = await (await client.get(path, headers={"Accept": "application/json"})).json()
    assert data == {"server": NAME, "module": module, "method": "GET", "path": path}


async def test_comptes_rendus_post_reads_whole_body(client: aiohttp.ClientSession) -> None:
    body = os.urandom(300_000)
    headers = {"Accept": "application/json"}
    async with client.post("/comptes-rendus/cr/1", data=body, headers=headers) as resp:
        data = await resp.json()
    assert data["method"] == "POST"
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/css/app.css", "text/css"),
        ("/static/js/app.js", "text/javascript"),
        ("/static/img/logo.png", "image/png"),
        ("/static/img/logo.svg", "image/svg+xml"),
        ("/static/blob", "application/octet-stream"),
    ],
)
async def test_static_content_type_by_extension(
    client: aiohttp.ClientSession, path: str, content_type: str
) -> None:
    async with client.get(path) as resp:
        assert resp.content_type == content_type
        assert 0 < len(await resp.read()) < 1024
    async with client.get(path, params={"size": "70000"}) as resp:
        assert resp.content_type == content_type
        assert resp.headers["Content-Length"] == "70000"
        assert await resp.read() == (PATTERN * 2)[:70000]


async def test_bytes_one_mebibyte(client: aiohttp.ClientSession) -> None:
    async with client.get("/bytes", params={"n": str(1 << 20)}) as resp:
        body = await resp.read()
    assert len(body) == 1 << 20
    assert hashlib.sha256(body).digest() == hashlib.sha256(PATTERN * 16).digest()


async def test_head_has_length_but_no_body(client: aiohttp.ClientSession) -> None:
    async with client.head("/bytes", params={"n": "100"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "100"
        assert await resp.read() == b""


@pytest.mark.parametrize("code", [204, 304])
async def test_status_without_body(client: aiohttp.ClientSession, code: int) -> None:
    async with client.get("/status", params={"code": str(code)}) as resp:
        assert resp.status == code
        assert await resp.read() == b""


async def test_slow_waits_at_least_the_asked_time(client: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    assert await status_of(client, "/slow?ms=150") == 200
    assert time.monotonic() - started >= 0.15


async def test_login_sets_opaque_session_cookie(client: aiohttp.ClientSession) -> None:
    values = []
    for _ in range(2):
        async with client.get("/login") as resp:
            cookie = resp.cookies["JSESSIONID"]
            assert cookie["path"] == "/"
            assert cookie["httponly"]
            assert "HttpOnly" in resp.headers["Set-Cookie"]
            values.append(cookie.value)
    assert values[0] != values[1]
    assert all(len(v) == 32 and NAME not in v for v in values)


async def test_echo_reports_request_as_received(mock: RunningMock) -> None:
    # A raw socket, because a client library would add, reorder or re-case headers.
    request = (
        b"POST /echo/x?b=2&a=%41 HTTP/1.1\r\n"
        b"Host: ehr.example\r\nX-B: 2\r\nx-a: 1\r\nX-Dup: one\r\nX-Dup: two\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    writer.write(request)
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nX-Server: m1" in head
    data = json.loads(body)
    assert data["method"] == "POST"
    assert data["target"] == "/echo/x?b=2&a=%41"
    assert data["headers"] == [
        ["Host", "ehr.example"],
        ["X-B", "2"],
        ["x-a", "1"],
        ["X-Dup", "one"],
        ["X-Dup", "two"],
        ["Content-Length", "5"],
        ["Connection", "close"],
    ]
    assert data["body_length"] == 5
    assert data["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


# --- controls ----------------------------------------------------------------------------------


async def test_health_control_and_reset(client: aiohttp.ClientSession) -> None:
    async with client.get("/health") as resp:
        assert (resp.status, await resp.text()) == (200, "OK")
    assert (await get_json(client, "/_mock/health?status=503"))["health_status"] == 503
    assert await status_of(client, "/health") == 503
    assert await status_of(client, "/accueil/") == 200  # only /health is affected
    await get_json(client, "/_mock/reset")
    assert await status_of(client, "/health") == 200


async def test_global_latency_delays_requests_but_not_controls(
    client: aiohttp.ClientSession,
) -> None:
    await get_json(client, "/_mock/latency?ms=200")
    for path in ("/accueil/", "/health"):
        started = time.monotonic()
        assert await status_of(client, path) == 200
        assert time.monotonic() - started >= 0.2
    await get_json(client, "/_mock/latency?ms=60000")
    quick = aiohttp.ClientTimeout(total=10)
    async with client.get("/_mock/stats", timeout=quick) as resp:
        assert resp.status == 200
    async with client.get("/_mock/reset", timeout=quick) as resp:
        assert resp.status == 200
    assert await status_of(client, "/accueil/") == 200


async def test_module_latency_delays_only_that_module(client: aiohttp.ClientSession) -> None:
    await get_json(client, "/_mock/latency?ms=200&module=dmu")
    started = time.monotonic()
    assert await status_of(client, "/dmu/patients") == 200
    assert time.monotonic() - started >= 0.2
    await get_json(client, "/_mock/latency?ms=60000&module=dmu")
    async with client.get("/accueil/", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200
    state = await get_json(client, "/_mock/latency?ms=0&module=dmu")
    assert state["module_latency_ms"] == {}


async def test_error_rate_one_fails_module_paths_only(client: aiohttp.ClientSession) -> None:
    assert (await get_json(client, "/_mock/errors?rate=1.0"))["error_rate"] == 1.0
    for path in MODULE_PATHS:
        async with client.get(path) as resp:
            assert resp.status == 500, path
            assert resp.headers["X-Server"] == NAME
    for path in PLAIN_PATHS:
        assert await status_of(client, path) < 500, path
    await get_json(client, "/_mock/stats")  # controls never fail
    await get_json(client, "/_mock/reset")
    for path in MODULE_PATHS:
        assert await status_of(client, path) == 200, path


async def test_module_error_rate(client: aiohttp.ClientSession) -> None:
    await get_json(client, "/_mock/errors?rate=1&module=dmu")
    assert await status_of(client, "/dmu/") == 500
    assert await status_of(client, "/accueil/") == 200


async def test_error_draws_are_reproducible(client: aiohttp.ClientSession) -> None:
    async def run() -> list[int]:
        await get_json(client, "/_mock/errors?rate=0.5&seed=7")
        return [await status_of(client, "/accueil/") for _ in range(40)]

    first = await run()
    assert set(first) == {200, 500}
    assert await run() == first


async def test_bad_control_values_are_rejected(client: aiohttp.ClientSession) -> None:
    for path in (
        "/_mock/latency?ms=abc",
        "/_mock/latency?ms=10&module=billing",
        "/_mock/errors?rate=2",
        "/_mock/errors?rate=x",
        "/_mock/health?status=99",
    ):
        assert await status_of(client, path) == 400, path
    state = await get_json(client, "/_mock/reset")
    assert state["latency_ms"] == 0
    assert state["error_rate"] == 0.0


async def test_reset_restores_everything(client: aiohttp.ClientSession) -> None:
    defaults = await get_json(client, "/_mock/reset")
    await get_json(client, "/_mock/health?status=500")
    await get_json(client, "/_mock/latency?ms=5")
    await get_json(client, "/_mock/latency?ms=5&module=static")
    await get_json(client, "/_mock/errors?rate=0.1&module=dmu")
    await status_of(client, "/accueil/")
    assert await get_json(client, "/_mock/reset") == defaults
    stats = await get_json(client, "/_mock/stats")
    assert stats["requests_total"] == 0
    assert stats["statuses"] == {}


async def test_stats_count_requests_per_module(client: aiohttp.ClientSession) -> None:
    for path in ["/accueil/", "/accueil/x", "/accueil/y", "/dmu/", "/dmu/z", "/health", "/nope"]:
        await status_of(client, path)
    await get_json(client, "/_mock/latency?ms=0")  # controls are not counted
    stats = await get_json(client, "/_mock/stats")
    assert stats["server"] == NAME
    assert stats["requests_total"] == 7
    assert stats["health_checks"] == 1
    assert stats["modules"] == {
        **dict.fromkeys(MODULES, 0),
        "accueil": 3,
        "dmu": 2,
        "other": 2,
    }
    assert stats["statuses"] == {"200": 6, "404": 1}
    assert stats["in_flight"] == 0


async def test_stats_in_flight(client: aiohttp.ClientSession) -> None:
    slow = asyncio.create_task(status_of(client, "/slow?ms=400"))
    for _ in range(100):
        if (await get_json(client, "/_mock/stats"))["in_flight"] == 1:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the slow request never showed in flight")
    assert await slow == 200
    assert (await get_json(client, "/_mock/stats"))["in_flight"] == 0


# --- the command -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mock_command(name: str, port: int, via_cli: bool) -> list[str]:
    if via_cli:
        return [sys.executable, "-m", "lbd", "mock", "--name", name, "--port", str(port)]
    call = f"mock_main({name!r}, '127.0.0.1', {port})"
    code = f"from lbd.mock.app import mock_main; raise SystemExit({call})"
    return [sys.executable, "-c", code]


def spawn(command: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode().strip() if ready else ""


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "via_cli",
    [
        pytest.param(False, id="mock_main"),
        pytest.param(
            True, id="python-m-lbd", marks=pytest.mark.skipif(bool(CLI_MISSING), reason=CLI_MISSING)
        ),
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_mock_command(
    via_cli: bool, signum: signal.Signals, reap: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    first = spawn(mock_command("t1", port, via_cli))
    reap.append(first)
    assert read_line(first, timeout=15) == f"mock t1 listening on http://127.0.0.1:{port}"

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/accueil/")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("X-Server")) == (200, "t1")
    conn.close()

    second = spawn(mock_command("t2", port, via_cli))
    reap.append(second)
    _, err = second.communicate(timeout=15)
    assert second.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()

    first.send_signal(signum)
    assert first.wait(timeout=10) == 0
