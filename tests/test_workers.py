"""`global.workers: 2`: a master that binds, supervises and aggregates; workers that serve.

Real `lbd run` on 127.0.0.1 with real mock EHR backends and real clients. Clients that must see
0 failures through a worker's SIGKILL retry an idempotent GET once per connection reset: the
connections held by the killed worker die with it (HAProxy's processes behave the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
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
from e2e_helpers import CRASH_MARKERS, REPO, TEST_TIMEOUTS, free_port
from test_tls_kit import make_cert

from lbd.mock.app import RunningMock, start_mock

READY_TIMEOUT = 20.0  # master + 2 fresh interpreters on 2 busy CPUs
STOP_TIMEOUT = 15.0


class Cluster:
    """`lbd run` with `workers: 2`, its admin socket and stats listener."""

    def __init__(self, tmp: Path, servers: list[int], **extra: Any) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.stats_port = free_port()
        self.admin = str(tmp / "admin.sock")
        self.path = tmp / "lbd.yaml"
        self.err = tmp / "lbd.stderr"
        self.config: dict[str, Any] = {
            "global": {
                "workers": 2,
                "admin_socket": self.admin,
                "stats": {"bind": f"127.0.0.1:{self.stats_port}"},
                "log": {"access": "off"},
            },
            "defaults": {"timeouts": dict(TEST_TIMEOUTS)},
            "frontends": {"fe": {"bind": [f"127.0.0.1:{self.port}"], "default_backend": "app"}},
            "backends": {
                "app": {
                    "servers": [
                        {"name": f"s{i + 1}", "address": f"127.0.0.1:{p}"}
                        for i, p in enumerate(servers)
                    ],
                    **extra,
                }
            },
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    async def start(self, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.write()
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lbd", "run", "-c", str(self.path)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        await self.wait_ready()

    async def wait_ready(self, restarts: int = 0) -> dict[str, str]:
        """`show info` once both workers are ready (and `restarts` restarts happened)."""
        info: dict[str, str] = {}
        for _ in range(int(READY_TIMEOUT / 0.1)):
            assert self.proc is not None and self.proc.poll() is None, self.stderr()
            with contextlib.suppress(OSError):
                info = parse_info(await self.ctl("show info"))
                total = sum(int(v.split()[-1]) for k, v in info.items() if k.startswith("Worker_"))
                if info.get("Workers_ready") == "2" and total >= restarts:
                    return info
            await asyncio.sleep(0.1)
        raise AssertionError(f"workers not ready: {info}\n{self.stderr()}")

    async def ctl(self, command: str) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.admin), 5)
        try:
            writer.write(command.encode() + b"\n")
            return (await asyncio.wait_for(reader.readuntil(b"\n\n"), 15)).decode()[:-2]
        finally:
            writer.close()

    async def get_stats(self, path: str) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.stats_port}{path}") as r,
        ):
            assert r.status == 200
            return await r.text()

    def worker_pids(self, info: dict[str, str]) -> list[int]:
        return [int(v.split()[1]) for k, v in sorted(info.items()) if k.startswith("Worker_")]

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(sig)
        for _ in range(int(STOP_TIMEOUT / 0.05)):
            if proc.poll() is not None:
                return proc.returncode
            await asyncio.sleep(0.05)
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"lbd ignored SIGTERM:\n{self.stderr()}")


def parse_info(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    return False


@pytest.fixture
async def mocks() -> AsyncIterator[list[RunningMock]]:
    started = [await start_mock(f"m{i}", "127.0.0.1", 0) for i in (1, 2)]
    yield started
    for m in started:
        await m.close()


@pytest.fixture
async def cluster(tmp_path: Path, mocks: list[RunningMock]) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, [m.port for m in mocks])
    yield c
    if c.proc is not None and c.proc.poll() is None:
        code = await c.stop()
        assert code == 0, c.stderr()
    assert not any(m in c.stderr() for m in CRASH_MARKERS), c.stderr()


async def get_retrying(session: aiohttp.ClientSession, url: str) -> int:
    """A GET, retried once on a connection reset (the worker holding it was killed)."""
    for attempt in range(2):
        try:
            async with session.get(url) as r:
                await r.read()
                return r.status
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt:
                raise
    raise AssertionError("unreachable")


async def load(url: str, stop: asyncio.Event, results: Counter[str], fresh: bool) -> None:
    """One client in a loop until `stop` (bounded: 2,000 requests at most)."""
    connector = aiohttp.TCPConnector(force_close=fresh)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(2000):
            if stop.is_set():
                return
            try:
                status = await get_retrying(session, url)
                results[str(status)] += 1
            except aiohttp.ClientConnectorError:
                results["refused"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[f"failed {type(exc).__name__}"] += 1
            await asyncio.sleep(0.005)


# --- tests ----------------------------------------------------------------------------------------


async def test_stats_totals_are_the_sum_over_workers(cluster: Cluster) -> None:
    await cluster.start()
    info = await cluster.wait_ready()
    assert info["Workers"] == "2" and len(set(cluster.worker_pids(info))) == 2
    n = 60
    url = f"http://127.0.0.1:{cluster.port}/accueil/patient"
    connector = aiohttp.TCPConnector(force_close=True)  # new connection: any worker may take it
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(url) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(n)))
    assert statuses == [200] * n

    snap = json.loads(await cluster.get_stats("/stats.json"))
    fe = next(f for f in snap["frontends"] if f["name"] == "fe")
    assert fe["requests"] == n
    metrics = await cluster.get_stats("/metrics")
    assert f'lbd_frontend_http_requests_total{{frontend="fe"}} {float(n)}' in metrics
    assert f'lbd_backend_http_requests_total{{backend="app"}} {float(n)}' in metrics
    rows = {r.split(",")[1]: r.split(",") for r in (await cluster.ctl("show stat")).splitlines()}
    assert rows["FRONTEND"][4] == str(n) and rows["BACKEND"][4] == str(n)
    assert int(rows["s1"][4]) + int(rows["s2"][4]) == n
    csv = await cluster.get_stats("/stats.csv")
    assert any(line.startswith("fe,FRONTEND,") for line in csv.splitlines())

    # A worker's SIGKILL loses none of the counters already read (Prometheus must never see a
    # _total go down): the totals stay, and new traffic adds to them.
    os.kill(cluster.worker_pids(info)[0], signal.SIGKILL)
    await cluster.wait_ready(restarts=1)
    rows = {r.split(",")[1]: r.split(",") for r in (await cluster.ctl("show stat")).splitlines()}
    assert rows["FRONTEND"][4] == str(n) and rows["BACKEND"][4] == str(n), rows


async def test_killed_worker_is_restarted_and_traffic_continues(cluster: Cluster) -> None:
    await cluster.start()
    info = await cluster.wait_ready()
    victim = cluster.worker_pids(info)[0]
    url = f"http://127.0.0.1:{cluster.port}/rendez-vous/x"
    stop = asyncio.Event()
    results: Counter[str] = Counter()
    clients = [asyncio.create_task(load(url, stop, results, fresh=i % 2 == 0)) for i in range(4)]
    await asyncio.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    info = await cluster.wait_ready(restarts=1)
    await asyncio.sleep(1.0)
    before = results["200"]
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*clients)
    assert set(results) == {"200"}, results
    assert results["200"] > before > 0  # traffic went on after the restart
    pids = cluster.worker_pids(info)
    assert victim not in pids and len(set(pids)) == 2
    assert "Worker_1: pid" in (await cluster.ctl("show info"))
    assert "restarts 1" in info["Worker_1"]
    assert f"Worker #1 (pid {victim}) killed by signal 9 unexpectedly." in cluster.stderr()


async def test_reload_under_load_fails_nothing_and_refuses_nothing(
    cluster: Cluster, mocks: list[RunningMock]
) -> None:
    await cluster.start()
    url = f"http://127.0.0.1:{cluster.port}/accueil/x"
    stop = asyncio.Event()
    results: Counter[str] = Counter()
    clients = [asyncio.create_task(load(url, stop, results, fresh=i % 2 == 0)) for i in range(4)]
    new_port = free_port()
    servers = cluster.config["backends"]["app"]["servers"]
    reports = []
    for step in range(3):
        await asyncio.sleep(0.7)
        servers[0]["weight"] = 2 + step
        if step == 1:
            cluster.config["frontends"]["fe"]["bind"].append(f"127.0.0.1:{new_port}")
        cluster.write()
        reports.append(await cluster.ctl("reload"))
    await asyncio.sleep(0.7)
    stop.set()
    await asyncio.gather(*clients)
    assert set(results) == {"200"} and results["200"] > 50, results
    assert reports[0] == "weight app/s1: 1 -> 2"
    assert f"listener added: 127.0.0.1:{new_port}" in reports[1]
    info = parse_info(await cluster.ctl("show info"))
    assert info["Generation"] == "4"
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{new_port}/accueil/") as r:
        assert r.status == 200  # the new listener is served by the workers

    # An invalid file: rejected, one error line with file and line, the old config runs.
    cluster.path.write_text(cluster.path.read_text() + "bogus_key: 1\n")
    answer = await cluster.ctl("reload")
    assert answer.startswith("rejected: the old configuration keeps running")
    assert re.search(r"lbd\.yaml:\d+: bogus_key", answer), answer
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200


async def test_admin_commands_through_the_master(
    cluster: Cluster, mocks: list[RunningMock]
) -> None:
    await cluster.start()
    url = f"http://127.0.0.1:{cluster.port}/accueil/x"
    assert "show stat" in await cluster.ctl("help")
    # Maintenance applies in every worker: 30 requests on new connections all reach s2.
    assert await cluster.ctl("set server app/s1 state maint") == "app/s1 state ready -> maint"
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(30):
            async with s.get(url) as r:
                seen[r.headers["X-Server"]] += 1
    assert seen == {"m2": 30}
    servers = await cluster.ctl("show servers")
    assert re.search(r"^app/s1 \S+ MAINT maint 1 0 0$", servers, re.M), servers
    assert re.search(r"^app/s2 \S+ UP ready 1 0 30$", servers, re.M), servers
    assert await cluster.ctl("set server app/s1 state ready") == "app/s1 state maint -> ready"
    assert await cluster.ctl("set server app/s2 weight 7") == "app/s2 weight 1 -> 7"
    assert re.search(r"^app/s2 \S+ UP ready 7 ", await cluster.ctl("show servers"), re.M)

    modules = await cluster.ctl("show modules")
    assert re.search(r"^fe other 30 30 0 0 ", modules, re.M), modules
    stat_json = json.loads(await cluster.ctl("show stat json"))
    assert stat_json["frontends"][0]["requests"] == 30
    assert "app/s1 no_check" in await cluster.ctl("show health")

    # A malformed request: refused by one worker, reported by the master.
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as raw:
        raw.sendall(b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    errors = await cluster.ctl("show errors")
    assert re.search(r"^fe \S+ 1$", errors, re.M), errors
    assert "rejected" in errors

    assert await cluster.ctl("clear counters") == "counters cleared"
    rows = {r.split(",")[1]: r.split(",") for r in (await cluster.ctl("show stat")).splitlines()}
    assert rows["FRONTEND"][4] == "0" and rows["s2"][4] == "0"
    assert not re.search(r"^fe ", await cluster.ctl("show errors"), re.M)

    # Bad input: one line starting with `error:`, through the master as in one process.
    for bad, expected in [
        ("set server app/nope state maint", "error: no such server: app/nope"),
        ("set server app/s1 weight 999", "error: weight must be an integer 0..256, got 999"),
        ("set server app/s1 state sleepy", "error: state must be one of"),
        ("disable health app/s1", "error: app/s1 has no health check"),
        ("show stat xml", "error: usage: show stat [json]"),
        ("frobnicate", "error: unknown command 'frobnicate'"),
    ]:
        answer = await cluster.ctl(bad)
        assert answer.startswith(expected) and "\n" not in answer, answer
    assert await cluster.ctl("reload") == "no change"


async def test_health_checks_run_once_in_the_master_and_reach_every_worker(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    check = {"type": "http", "path": "/health", "interval": "200ms", "rise": 1, "fall": 1}
    cluster = Cluster(tmp_path, [m.port for m in mocks], health_check=check)
    await cluster.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{mocks[0].url}/_mock/health?status=503") as r:
                assert r.status == 200
            for _ in range(100):
                if re.search(r"^app/s1 \S+ DOWN", await cluster.ctl("show servers"), re.M):
                    break
                await asyncio.sleep(0.1)
            seen: Counter[str] = Counter()
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as fresh:
                for _ in range(30):
                    async with fresh.get(f"http://127.0.0.1:{cluster.port}/accueil/") as r:
                        seen[r.headers["X-Server"]] += 1
            assert seen == {"m2": 30}  # both workers know s1 is down
            # Checks run once per interval (master only), not once per process: ~5 per second.
            before = mocks[1].state.counters.health_checks
            await asyncio.sleep(1.0)
            hits = mocks[1].state.counters.health_checks - before
            assert 0 < hits <= 8, hits
        err = cluster.stderr()
        assert err.count("Server app/s1 is DOWN") == 1, err  # logged once, by the master
        disable = await cluster.ctl("disable health app/s1")
        assert disable == "app/s1 health disabled"
        for _ in range(50):  # the master's verdict (UP) reaches the workers
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh,
            ):
                got = set()
                for _ in range(10):
                    async with fresh.get(f"http://127.0.0.1:{cluster.port}/accueil/") as r:
                        got.add(r.headers["X-Server"])
            if "m1" in got:
                break
            await asyncio.sleep(0.1)
        assert "m1" in got
    finally:
        assert await cluster.stop() == 0, cluster.stderr()


async def test_sigterm_with_a_slow_request_in_flight_completes_it_then_exits_0(
    cluster: Cluster, mocks: list[RunningMock]
) -> None:
    await cluster.start()
    info = await cluster.wait_ready()
    async with aiohttp.ClientSession() as s:
        for m in mocks:
            async with s.get(f"{m.url}/_mock/latency?ms=1500") as r:
                assert r.status == 200
        slow = asyncio.create_task(_fetch(s, f"http://127.0.0.1:{cluster.port}/accueil/slow"))
        await asyncio.sleep(0.5)
        assert cluster.proc is not None
        cluster.proc.send_signal(signal.SIGTERM)
        status, body = await asyncio.wait_for(slow, 10)
    assert status == 200 and body
    assert await cluster.stop() == 0, cluster.stderr()
    for pid in cluster.worker_pids(info):
        assert not pid_alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=1).close()


async def _fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as r:
        return r.status, await r.read()


async def test_sd_notify_with_workers(cluster: Cluster) -> None:
    notify_path = str(cluster.tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    seen: list[str] = []

    def drain() -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                seen.append(sock.recv(4096).decode())

    try:
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
        await cluster.start(env=env)
        for _ in range(50):
            drain()
            if any("READY=1" in m for m in seen):
                break
            await asyncio.sleep(0.1)
        assert cluster.proc is not None
        for step in (signal.SIGHUP, signal.SIGTERM):
            for _ in range(10):
                await asyncio.sleep(0.1)
                drain()
            cluster.proc.send_signal(step)
        assert await cluster.stop() == 0
        drain()
    finally:
        sock.close()
    states = [m for m in seen if not m.startswith("WATCHDOG")]
    kinds = [m.split("\n")[0].split("=")[0] for m in states]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], seen
    assert "STATUS=generation 1: 1 listeners, 2/2 workers" in states[0]
    assert "MONOTONIC_USEC=" in states[1]
    assert "STATUS=generation 2: 1 listeners, 2/2 workers" in states[2]
    assert sum(1 for m in seen if m == "WATCHDOG=1") >= 5


async def test_workers_that_cannot_start_stop_the_master_with_exit_3(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    """A damaged installation (the worker module no longer imports: an upgrade interrupted
    half-way) must not leave a master restarting workers forever."""
    install = tmp_path / "install"
    shutil.copytree(REPO / "lbd", install / "lbd", ignore=shutil.ignore_patterns("__pycache__"))
    (install / "lbd" / "process" / "child.py").write_text("this is not python(\n")
    cluster = Cluster(tmp_path, [m.port for m in mocks])
    cluster.write()
    env = {**os.environ, "PYTHONPATH": str(install)}
    with cluster.err.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbd", "run", "-c", str(cluster.path)],
            cwd=install,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err_text = cluster.err.read_text()
    assert code == 3, err_text
    assert "5 consecutive boot failures" in err_text
    assert "workers cannot start: stopping (exit code 3)" in err_text
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=1).close()


async def test_passive_observation_in_workers_feeds_the_masters_one_health_state(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    """Workers count errors on live traffic; at `error_limit` they hand the trigger to the
    master, which marks the server down once and tells every worker."""
    cluster = Cluster(
        tmp_path,
        [m.port for m in mocks],
        health_check={"type": "http", "path": "/health", "interval": "30s"},
        observe={"mode": "layer7", "error_limit": 2, "on_error": "mark-down"},
    )
    await cluster.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{mocks[0].url}/_mock/errors?rate=1") as r:
                assert r.status == 200
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as fresh:
                url = f"http://127.0.0.1:{cluster.port}/accueil/"
                for _ in range(60):
                    async with fresh.get(url) as r:
                        await r.read()
                    if "DOWN" in await cluster.ctl("show servers"):
                        break
                servers = await cluster.ctl("show servers")
                assert re.search(r"^app/s1 \S+ DOWN ", servers, re.M), servers
                seen: Counter[str] = Counter()
                for _ in range(20):
                    async with fresh.get(url) as r:
                        seen[r.headers["X-Server"]] += 1
        assert seen == {"m2": 20}  # every worker applied the master's verdict
        err = cluster.stderr()
        assert err.count("Server app/s1 is DOWN, reason: Health analyze") == 1, err
        health = await cluster.ctl("show health")
        assert re.search(r"^app/s1 DOWN HANA - - 1 1 ", health, re.M), health
    finally:
        assert await cluster.stop() == 0, cluster.stderr()


def _requests_total(metrics: str) -> float:
    match = re.search(r'^lbd_frontend_http_requests_total\{frontend="fe"\} (\S+)$', metrics, re.M)
    assert match, metrics
    return float(match.group(1))


def _still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) != b""
    except (BlockingIOError, TimeoutError):  # nothing to read: still open
        return True
    except ConnectionError:
        return False


async def test_totals_never_go_down_when_a_worker_misses_a_reading_or_dies(
    cluster: Cluster,
) -> None:
    # Idle connections must outlive the test's pauses (a stopped worker, a restart).
    cluster.config["defaults"]["timeouts"].update(http_request="60s", client="60s")
    await cluster.start()
    info = await cluster.wait_ready()
    url = f"http://127.0.0.1:{cluster.port}/accueil/x"
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def burst(count: int) -> None:
            for _ in range(count):
                async with session.get(url) as r:
                    assert r.status == 200

        await burst(40)
        held = [socket.create_connection(("127.0.0.1", cluster.port), 5) for _ in range(6)]
        try:
            for _ in range(100):  # every held connection accepted by some worker
                rows = {r.split(",")[1]: r for r in (await cluster.ctl("show stat")).splitlines()}
                if rows["FRONTEND"].split(",")[2] == "6":
                    break
                await asyncio.sleep(0.1)
            assert _requests_total(await cluster.get_stats("/metrics")) == 40.0

            # A worker that misses a reading counts with its previous counters.
            victim = cluster.worker_pids(info)[0]
            os.kill(victim, signal.SIGSTOP)
            try:
                assert _requests_total(await cluster.get_stats("/metrics")) == 40.0
                assert "Stale_in_totals: #1" in await cluster.ctl("show info")
            finally:
                os.kill(victim, signal.SIGKILL)

            # A worker that died: its counters stay in the totals, its connections do not.
            await cluster.wait_ready(restarts=1)
            assert _requests_total(await cluster.get_stats("/metrics")) == 40.0
            alive = sum(_still_open(s) for s in held)
            rows = {r.split(",")[1]: r for r in (await cluster.ctl("show stat")).splitlines()}
            assert rows["FRONTEND"].split(",")[2] == str(alive), (alive, rows["FRONTEND"])
            await burst(10)
            assert _requests_total(await cluster.get_stats("/metrics")) == 50.0
        finally:
            for sock in held:
                sock.close()
    assert await cluster.ctl("clear counters") == "counters cleared"
    assert _requests_total(await cluster.get_stats("/metrics")) == 0.0


async def test_reload_adding_tls_to_a_bound_address_is_rejected_and_stays_rejected(
    cluster: Cluster,
) -> None:
    """Every worker would refuse it: the master refuses it first, exits 1 from `lbd reload`,
    and a worker restarted afterwards runs the old (plain HTTP) configuration too."""
    await cluster.start()
    info = await cluster.wait_ready()
    cert, key = make_cert(cluster.tmp, "ehr", ("IP:127.0.0.1",))
    cluster.config["frontends"]["fe"]["tls"] = {"cert": str(cert), "key": str(key)}
    cluster.write()
    reload = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lbd", "reload", "-c", str(cluster.path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reload.returncode == 1, (reload.stdout, reload.stderr)
    assert f"frontends.fe.tls: 127.0.0.1:{cluster.port} serves plain HTTP now" in (
        reload.stdout + reload.stderr
    )
    assert parse_info(await cluster.ctl("show info"))["Generation"] == "1"

    os.kill(cluster.worker_pids(info)[0], signal.SIGKILL)
    await cluster.wait_ready(restarts=1)
    url = f"http://127.0.0.1:{cluster.port}/accueil/x"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(20):  # new connections: both workers, the restarted one included
            async with s.get(url) as r:
                assert r.status == 200
    assert "reload rejected: frontends.fe.tls" in cluster.stderr()


async def test_show_table_through_the_master_shows_each_workers_table(
    tmp_path: Path, mocks: list[RunningMock]
) -> None:
    sticky = {"table": {"on": "cookie", "learn_cookie": "JSESSIONID"}}
    cluster = Cluster(tmp_path, [m.port for m in mocks], sticky=sticky)
    await cluster.start()
    try:
        info = await cluster.wait_ready()
        url = f"http://127.0.0.1:{cluster.port}/login"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(8):
                async with s.get(url) as r:
                    assert r.status == 200
        answer = await cluster.ctl("show table")
        pids = cluster.worker_pids(info)
        assert f"# worker #1 (pid {pids[0]})" in answer
        assert f"# worker #2 (pid {pids[1]})" in answer
        used = [
            int(n) for n in re.findall(r"^# table: app, on: cookie, .*used: (\d+),", answer, re.M)
        ]
        assert len(used) == 2 and sum(used) == 8, answer  # learned where each login was served
        detail = await cluster.ctl("show table app")
        assert detail.count("# key server idle_s") == 2, detail
        assert await cluster.ctl("show table nope") == "error: no stick table in backend 'nope'"
    finally:
        assert await cluster.stop() == 0, cluster.stderr()
