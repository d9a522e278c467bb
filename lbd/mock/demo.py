"""`lbd demo`: mock EHR backends plus lbd with conf/demo.yaml, all stopped by one Ctrl-C.

Rules:
- every child is a subprocess (`python -m lbd mock ...`, `python -m lbd run ...`) in its own
  process group, so a terminal's Ctrl-C reaches only the demo, which then sends each child
  exactly one SIGTERM (lbd first, so it does not watch its servers vanish), waits a bounded time
  and SIGKILLs stragglers; child output goes straight to the terminal;
- signal handlers only record the signal; the supervising loop acts on it (as gunicorn's arbiter);
- every wait is bounded; a child that fails to listen stops the demo with exit 3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

HOST = "127.0.0.1"
# Must match the servers in conf/demo.yaml.
MOCKS = (("app1", 9001), ("app2", 9002), ("app3", 9003), ("static1", 9101))
FRONTEND_PORT = 8080
STATS_PORT = 8404

MOCK_START_S = 10.0
LBD_START_S = 15.0
STATS_GRACE_S = 3.0  # after the frontend listens
LBD_STOP_S = 8.0  # lbd drains in-flight requests first
MOCK_STOP_S = 3.0
POLL_S = 0.1

BANNER = f"""\
lbd demo is running:
  EHR application   http://{HOST}:{FRONTEND_PORT}/accueil/
  stats page        http://{HOST}:{STATS_PORT}/stats
  Prometheus        http://{HOST}:{STATS_PORT}/metrics
Ctrl-C stops everything."""

# The directory holding this `lbd` package: children must run the same code as the demo,
# installed or not.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def default_config_path() -> Path:
    """conf/demo.yaml of the source tree this file belongs to, else of the working directory."""
    beside = _PACKAGE_ROOT / "conf" / "demo.yaml"
    return beside if beside.is_file() else Path.cwd() / "conf" / "demo.yaml"


def port_open(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on HOST:PORT."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _exit_code(returncode: int) -> int:
    """A child killed by signal N is reported as the shell does, 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


class _Signals:
    """Records the first SIGINT/SIGTERM/SIGHUP; restores the previous handlers on exit."""

    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, _Handler] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> _Signals:
        for signum in self.WATCHED:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    exit_reported: bool = False

    def running(self) -> bool:
        return self.process.poll() is None


class _Wait(Enum):
    READY = "ready"
    EXITED = "exited"
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # the operator asked to stop meanwhile


def _spawn(name: str, args: list[str]) -> _Child:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    # process_group=0: out of the terminal's foreground group, see the module banner.
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, env=env, process_group=0)
    return _Child(name, process)


def _wait_listening(child: _Child, port: int, deadline: float, signals: _Signals) -> _Wait:
    """Poll until CHILD listens on PORT, exits, the operator stops, or DEADLINE (monotonic)."""
    while True:
        if signals.received is not None:
            return _Wait.STOPPED
        if not child.running():
            return _Wait.EXITED
        if port_open(port):
            return _Wait.READY
        if time.monotonic() >= deadline:
            return _Wait.TIMEOUT
        time.sleep(POLL_S)


def _stop(children: list[_Child], timeout: float) -> None:
    """SIGTERM each running child once, wait until TIMEOUT, then SIGKILL the rest."""
    for child in children:
        if child.running():
            child.process.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"lbd demo: {child.name} did not stop in {timeout:g}s, killing it", file=sys.stderr
            )
            child.process.kill()
            child.process.wait()


def _say(message: str) -> None:
    print(f"lbd demo: {message}", file=sys.stderr, flush=True)


class _Demo:
    """The children of one demo run and the loop that supervises them."""

    def __init__(self, config: Path, signals: _Signals) -> None:
        self.config = config
        self.signals = signals
        self.mocks: list[_Child] = []
        self.lbd: _Child | None = None

    def run(self) -> int:
        code = self._start_mocks()
        if code is not None:
            return code
        code = self._start_lbd()
        if code is not None:
            return code
        print(BANNER, flush=True)
        return self._supervise()

    def stop(self) -> None:
        if self.lbd is not None:
            _stop([self.lbd], LBD_STOP_S)
        _stop(self.mocks, MOCK_STOP_S)

    def _start_mocks(self) -> int | None:
        for name, port in MOCKS:
            command = [sys.executable, "-m", "lbd", "mock", "--name", name, "--port", str(port)]
            self.mocks.append(_spawn(name, command))
        deadline = time.monotonic() + MOCK_START_S  # they start in parallel: one shared bound
        for child, (name, port) in zip(self.mocks, MOCKS, strict=True):
            outcome = _wait_listening(child, port, deadline, self.signals)
            if outcome is _Wait.STOPPED:
                return 0
            if outcome is not _Wait.READY:
                _say(f"mock {name} is not listening on {HOST}:{port} ({outcome.value}); stopping")
                return 3
        return None

    def _start_lbd(self) -> int | None:
        command = [sys.executable, "-m", "lbd", "run", "-c", str(self.config)]
        lbd = self.lbd = _spawn("lbd", command)
        outcome = _wait_listening(lbd, FRONTEND_PORT, time.monotonic() + LBD_START_S, self.signals)
        if outcome is _Wait.TIMEOUT:
            _say(f"lbd is not listening on {HOST}:{FRONTEND_PORT} after {LBD_START_S:g}s; stopping")
            return 3
        if outcome is not _Wait.READY:
            return self._early_end(outcome, FRONTEND_PORT)
        # lbd opens its listeners together: once the frontend is up, the stats one is due soon.
        outcome = _wait_listening(lbd, STATS_PORT, time.monotonic() + STATS_GRACE_S, self.signals)
        if outcome is _Wait.TIMEOUT:
            _say(f"warning: nothing listens on {HOST}:{STATS_PORT}: no stats page (global.stats)")
            return None
        return None if outcome is _Wait.READY else self._early_end(outcome, STATS_PORT)

    def _early_end(self, outcome: _Wait, port: int) -> int:
        """Exit code when lbd exited, or the operator stopped, before PORT listened."""
        if outcome is _Wait.STOPPED:
            return 0
        assert self.lbd is not None
        code = _exit_code(self.lbd.process.returncode)
        _say(f"lbd exited with code {code} before listening on {HOST}:{port}; stopping")
        return code

    def _supervise(self) -> int:
        assert self.lbd is not None
        while self.signals.received is None:
            if not self.lbd.running():
                code = _exit_code(self.lbd.process.returncode)
                _say(f"lbd exited with code {code}; stopping the mocks")
                return code
            self._report_dead_mocks()
            time.sleep(POLL_S)
        return 0

    def _report_dead_mocks(self) -> None:
        # A mock that dies is part of the show (lbd marks it down); say so once, keep running.
        for child in self.mocks:
            if not child.exit_reported and not child.running():
                child.exit_reported = True
                _say(f"mock {child.name} exited with code {child.process.returncode}")


def demo_main(config_path: str | None = None) -> int:
    """Blocking `lbd demo`: 0 after Ctrl-C/SIGTERM, lbd's code if it exits, 3 if a start fails."""
    config = Path(config_path) if config_path else default_config_path()
    if not config.is_file():
        _say(f"configuration file not found: {config}")
        return 1
    busy = [port for port in (*(p for _, p in MOCKS), FRONTEND_PORT, STATS_PORT) if port_open(port)]
    if busy:
        _say(f"port(s) {', '.join(map(str, busy))} already in use on {HOST}; free them first")
        return 3
    with _Signals() as signals:
        demo = _Demo(config, signals)
        try:
            return demo.run()
        finally:
            demo.stop()
