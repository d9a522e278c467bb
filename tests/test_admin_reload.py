"""Admin socket, `lbd ctl`, `lbd reload` and graceful stop, end to end.

A real lbd process on 127.0.0.1, real mock EHR backends, real clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from lbd.mock.app import RunningMock, start_mock

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.path = tmp / "lbd.yaml"
        self.err = tmp / "lbd.stderr"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    async def start(self, port: int) -> None:
        self.write()
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lbd", "run", "-c", str(self.path)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        for _ in range(200):
            assert self.proc.poll() is None, self.err.read_text()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"lbd did not start:\n{self.err.read_text()}")
        admin = self.config["global"].get("admin_socket")
        for _ in range(200):  # the admin socket opens just after the listeners
            if admin is None or Path(admin).exists():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no admin socket:\n{self.err.read_text()}")

    def lbd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lbd", *args, "-c", str(self.path)]
            if args[0] == "reload"
            else [sys.executable, "-m", "lbd", "ctl", "-c", str(self.path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise AssertionError("lbd did not stop within 15 s")


def _config(port: int, sock: Path, servers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "global": {"admin_socket": str(sock), "log": {"access": "off"}},
        "defaults": {"timeouts": {"shutdown": "10s"}},
        "frontends": {"fe": {"bind": [f"127.0.0.1:{port}"], "default_backend": "app"}},
        "backends": {"app": {"servers": servers}},
    }


@pytest.fixture
async def mocks() -> AsyncIterator[list[RunningMock]]:
    running = [await start_mock(f"m{i}", "127.0.0.1", 0) for i in range(3)]
    yield running
    for m in running:
        await m.close()


async def _get(session: aiohttp.ClientSession, port: int, path: str = "/accueil/") -> str:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["X-Server"]


async def test_ctl_commands_and_bad_input(tmp_path: Path, mocks: list[RunningMock]) -> None:
    port = _free_port()
    servers = [{"name": m.state.name, "address": f"127.0.0.1:{m.port}"} for m in mocks[:2]]
    daemon = Daemon(tmp_path, _config(port, tmp_path / "admin.sock", servers))
    await daemon.start(port)
    try:
        assert (tmp_path / "admin.sock").stat().st_mode & 0o777 == 0o600
        info = daemon.lbd("show", "info")
        assert info.returncode == 0 and "Generation: 1" in info.stdout
        assert daemon.lbd("help").stdout.count("\n") >= 8
        out = daemon.lbd("set", "server", "app/m1", "state", "maint")
        assert out.returncode == 0 and "ready -> maint" in out.stdout
        async with aiohttp.ClientSession() as session:
            seen = Counter([await _get(session, port) for _ in range(20)])
        assert seen == Counter({"m0": 20}), seen  # MAINT takes nothing
        servers_out = daemon.lbd("show", "servers").stdout
        assert "app/m1" in servers_out and "MAINT" in servers_out
        assert "app/m0" in servers_out and " 20" in servers_out.split("app/m0")[1].split("\n")[0]
        for bad in (
            ["set", "server", "app/nope", "state", "maint"],
            ["set", "server", "app/m0", "state", "sleeping"],
            ["set", "server", "app/m0", "weight", "300"],
            ["set", "server", "noslash", "weight", "3"],
            ["frobnicate"],
        ):
            res = daemon.lbd(*bad)
            assert res.returncode == 1, bad
            assert res.stdout.startswith("error:"), res.stdout
            assert "Traceback" not in res.stdout + res.stderr
        stat = daemon.lbd("show", "stat").stdout.splitlines()
        assert stat[0].startswith("# pxname,svname")
        assert any(row.startswith("app,m0,") for row in stat)
    finally:
        assert await daemon.stop() == 0


async def test_reload_adds_server_keeps_admin_state_rejects_bad_file(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    port = _free_port()
    sock = tmp_path / "admin.sock"
    two = [{"name": m.state.name, "address": f"127.0.0.1:{m.port}"} for m in mocks[:2]]
    daemon = Daemon(tmp_path, _config(port, sock, two))
    await daemon.start(port)
    try:
        assert daemon.lbd("set", "server", "app/m1", "state", "drain").returncode == 0
        three = [*two, {"name": "m2", "address": f"127.0.0.1:{mocks[2].port}", "weight": 3}]
        daemon.write(_config(port, sock, three))
        res = daemon.lbd("reload")
        assert res.returncode == 0, res.stderr
        assert "server added: app/m2" in res.stdout
        servers = daemon.lbd("show", "servers").stdout
        assert "DRAIN" in servers.split("app/m1")[1].split("\n")[0]  # admin state survived
        async with aiohttp.ClientSession() as session:
            seen = Counter([await _get(session, port) for _ in range(40)])
        assert set(seen) == {"m0", "m2"} and seen["m2"] > seen["m0"], seen

        daemon.path.write_text(daemon.path.read_text() + "bogus_key: 1\n")
        bad = daemon.lbd("reload")
        assert bad.returncode == 1
        assert "bogus_key: unknown key" in bad.stderr
        async with aiohttp.ClientSession() as session:
            assert await _get(session, port) in {"m0", "m2"}  # still serving the old config
        assert "Generation: 2" in daemon.lbd("show", "info").stdout
    finally:
        assert await daemon.stop() == 0


async def test_reload_under_load_loses_nothing(tmp_path: Path, mocks: list[RunningMock]) -> None:
    port = _free_port()
    sock = tmp_path / "admin.sock"
    base = [{"name": m.state.name, "address": f"127.0.0.1:{m.port}"} for m in mocks[:2]]
    daemon = Daemon(tmp_path, _config(port, sock, base))
    await daemon.start(port)
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            for _ in range(2000):  # bounded; stops earlier on the event
                if stop.is_set():
                    return
                try:
                    await _get(session, port)
                    done += 1
                except (aiohttp.ClientError, AssertionError) as exc:
                    failures.append(repr(exc))

    try:
        tasks = [asyncio.create_task(client()) for _ in range(4)]
        for i in range(6):
            await asyncio.sleep(0.3)
            servers = (
                base if i % 2 else [*base, {"name": "m2", "address": f"127.0.0.1:{mocks[2].port}"}]
            )
            daemon.write(_config(port, sock, [{**s, "weight": 1 + i} for s in servers]))
            assert daemon.lbd("reload").returncode == 0
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert failures == []
        assert done > 50
    finally:
        stop.set()
        assert await daemon.stop() == 0


async def test_sigterm_lets_slow_request_finish(tmp_path: Path, mocks: list[RunningMock]) -> None:
    port = _free_port()
    servers = [{"name": "m0", "address": f"127.0.0.1:{mocks[0].port}"}]
    daemon = Daemon(tmp_path, _config(port, tmp_path / "admin.sock", servers))
    await daemon.start(port)
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?ms=1000"))
        await asyncio.sleep(0.3)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        resp = await asyncio.wait_for(slow, 10)
        assert resp.status == 200
        await resp.read()
        resp.release()
    assert await daemon.stop() == 0


async def test_reload_applies_a_new_access_log_target(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    port = _free_port()
    sock = tmp_path / "admin.sock"
    servers = [{"name": "m0", "address": f"127.0.0.1:{mocks[0].port}"}]
    daemon = Daemon(tmp_path, _config(port, sock, servers))
    await daemon.start(port)
    try:
        log_file = tmp_path / "access.log"
        config = _config(port, sock, servers)
        config["global"]["log"] = {"access": str(log_file), "format": "json"}
        daemon.write(config)
        res = daemon.lbd("reload")
        assert res.returncode == 0, res.stderr
        assert "access log: off (httplog) -> " in res.stdout
        async with aiohttp.ClientSession() as session:
            assert await _get(session, port, "/accueil/after-reload") == "m0"
        for _ in range(100):  # the writer thread flushes every 100 ms
            if log_file.exists() and "after-reload" in log_file.read_text():
                break
            await asyncio.sleep(0.05)
        line = log_file.read_text().strip().splitlines()[-1]
        assert '"path":"/accueil/after-reload"' in line and '"server":"m0"' in line
    finally:
        assert await daemon.stop() == 0
