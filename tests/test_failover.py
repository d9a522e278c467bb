"""Failover without a human: one of three application servers is killed (SIGKILL) under steady
traffic. Retries with redispatch hide it from users; checks take it out of rotation.

Figures (failed requests, seconds until DOWN) are printed for the issue note; the assertion is
on correctness (0 failed GETs), not on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
from e2e_helpers import REPO, Harness, free_port

SERVERS = 3
RATE = 50  # requests per second, spread over 5 client loops
DURATION = 6.0
KILL_AT = 2.0


async def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


async def test_sigkill_one_of_three_servers_under_load_fails_no_get(
    harness: Harness, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(SERVERS)]
    mocks = [
        subprocess.Popen(
            [sys.executable, "-m", "lbd", "mock", "--name", f"app{i + 1}", "--port", str(p)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, p in enumerate(ports)
    ]
    try:
        for p in ports:
            await _wait_port(p)
        lbd = await harness.lbd(
            ports,
            backend={
                "health_check": {
                    "type": "http",
                    "path": "/health",
                    "interval": "500ms",
                    "rise": 2,
                    "fall": 2,
                },
                "observe": {"mode": "layer4", "error_limit": 3, "on_error": "mark-down"},
                "retries": 3,
                "redispatch": True,
            },
        )
        url = f"http://127.0.0.1:{lbd.port}/accueil/patient"
        failures: list[str] = []
        served: dict[str, int] = {}
        started = time.monotonic()
        stop_at = started + DURATION

        async def client(session: aiohttp.ClientSession) -> None:
            interval = 5 / RATE
            for _ in range(int(DURATION * RATE)):  # bounded; stops at stop_at
                if time.monotonic() >= stop_at:
                    return
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            failures.append(f"status {resp.status}")
                        name = resp.headers.get("X-Server", "?")
                        served[name] = served.get(name, 0) + 1
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(interval)

        async def killer() -> float:
            await asyncio.sleep(KILL_AT)
            os.kill(mocks[1].pid, signal.SIGKILL)
            return time.time()

        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(killer(), *(client(session) for _ in range(5)))
        killed_at = results[0]

        err = lbd.stderr()
        down_line = next((ln for ln in err.splitlines() if "app/s2 is DOWN" in ln), None)
        assert down_line is not None, err
        assert failures == [], failures[:5]
        total = sum(served.values())
        assert total > DURATION * RATE * 0.5
        assert served.get("app1", 0) > 0 and served.get("app3", 0) > 0
        stamp = datetime.strptime(down_line.split(" lbd", 1)[0], "%Y-%m-%d %H:%M:%S,%f")
        print(
            f"\nfailover: {total} GETs, {len(failures)} failed; server marked DOWN "
            f"{stamp.timestamp() - killed_at:.2f}s after SIGKILL"
        )
    finally:
        for proc in mocks:
            if proc.poll() is None:
                proc.terminate()
        for proc in mocks:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
