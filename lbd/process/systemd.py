"""sd_notify(3) without libsystemd: READY, RELOADING, STOPPING, STATUS and the watchdog.

Rules (after gunicorn's systemd.py): a no-op when NOTIFY_SOCKET is unset, so the same code runs
under systemd, in a terminal and in tests; never raises (a notification lost must not stop the
proxy); `@` at the start of the path means Linux's abstract socket namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("lbd.systemd")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._watchdog_task: asyncio.Task[None] | None = None
        self._last_warning = -60.0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and ours else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: a receiver that does not read (its queue holds
                # ~10 datagrams) must cost a lost notification, not a stalled proxy.
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_warning >= 60.0:
                self._last_warning = now
                log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd ≥ 253 (Type=notify-reload) wants the monotonic time with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing in-flight requests")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def start_watchdog(self, alive: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Ping at half of WatchdogSec from the event loop: a stuck loop stops the pings. With
        `alive` (a master: do its workers answer?), a ping is sent only when it says yes."""
        if self.watchdog_interval <= 0 or not self._address:
            return

        async def ping() -> None:
            while True:
                if alive is None or await alive():
                    self.send("WATCHDOG=1")
                await asyncio.sleep(self.watchdog_interval)

        self._watchdog_task = asyncio.get_running_loop().create_task(ping())

    def stop_watchdog(self) -> None:
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            self._watchdog_task = None
