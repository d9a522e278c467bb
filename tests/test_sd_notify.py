"""sd_notify: READY after the listeners are bound, RELOADING (with MONOTONIC_USEC) then READY on
a reload, STOPPING on SIGTERM, WATCHDOG pings when WatchdogSec is set; received on a real
NOTIFY_SOCKET datagram socket, in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from e2e_helpers import REPO, free_port


def _messages(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


async def test_notify_sequence_ready_reloading_ready_stopping_and_watchdog(
    tmp_path: Path,
) -> None:
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    port = free_port()
    config = tmp_path / "lbd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"log": {"access": "off"}},
                "frontends": {"fe": {"bind": [f"127.0.0.1:{port}"], "default_backend": "b"}},
                "backends": {"b": {"servers": [{"name": "s1", "address": "127.0.0.1:9"}]}},
            }
        )
    )
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbd", "run", "-c", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: list[str] = []
    try:
        for _ in range(200):  # ≤ 10 s for READY
            seen += _messages(sock)
            if any("READY=1" in m for m in seen):
                break
            await asyncio.sleep(0.05)
        ready = next(m for m in seen if "READY=1" in m)
        assert "STATUS=generation 1: 1 listeners" in ready
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # READY came after the listener was bound
        for step in (signal.SIGHUP, signal.SIGTERM):
            for _ in range(10):  # read as systemd does, while lbd runs
                await asyncio.sleep(0.1)
                seen += _messages(sock)
            proc.send_signal(step)
        for _ in range(150):  # ≤ 15 s for the graceful stop
            seen += _messages(sock)
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert proc.wait(timeout=1) == 0
        seen += _messages(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    kinds = [m.split("\n")[0].split("=")[0] for m in seen if not m.startswith("WATCHDOG")]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], seen
    reloading = next(m for m in seen if m.startswith("RELOADING=1"))
    assert "MONOTONIC_USEC=" in reloading
    assert sum(1 for m in seen if m == "WATCHDOG=1") >= 5  # every 100 ms for ~2 s
