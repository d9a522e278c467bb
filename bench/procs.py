"""Processes for the benchmark: start them pinned, wait for them, measure them, always stop them.

Rules: every child runs in its own session (process group) so that stopping it also stops
whatever it forked (nginx workers); every wait is bounded; CPU time and RSS are summed over the
whole process tree, because nginx does its work in a worker under the master we started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A service did not come up; the message carries the tail of its log."""


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (respects cgroup/cpuset restrictions)."""
    return sorted(os.sched_getaffinity(0))


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the kernel picks it; tiny race until the user binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """argv run under `taskset -c CPU` (taskset execs, so the PID stays the service's own)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited after `grace` seconds."""
    if proc.poll() is None:
        _kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The leader may be gone while children it forked are still alive: sweep the group.
    _kill_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


class Supervisor:
    """Owns every long-running child of the benchmark; `stop_all` is safe to call twice."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in its own session, output to LOGDIR/NAME.log; `env` adds variables."""
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        self.children.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self.logdir / f"{name}.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        while self.children:
            stop(self.children.pop())


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command in its own process group; kill the group on timeout/Ctrl-C."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """Return once 127.0.0.1:port accepts; raise StartError if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise StartError(f"port {port} did not accept within {timeout:.0f}s")


# --- /proc accounting ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name; index i is field i+3 of proc(5)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(_stat_fields(int(entry.name))[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_times(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree, all threads, plus children it already
    reaped. The split shows how much of a proxy's cost is its own code and how much the kernel."""
    user = system = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(pid)
            user += int(f[11]) + int(f[13])  # utime cutime
            system += int(f[12]) + int(f[14])  # stime cstime
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def cpu_seconds(root: int) -> float:
    """User+system CPU of the process tree (see cpu_times)."""
    return sum(cpu_times(root))


def _cpu_jiffies(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return sum(values) - idle, sum(values)
    return 0, 0


def busy_percent(cpus: list[int], seconds: float = 1.0) -> float:
    """How busy `cpus` are (0-100, averaged) over a short sample: other load skews results."""
    before = [_cpu_jiffies(c) for c in cpus]
    time.sleep(seconds)
    after = [_cpu_jiffies(c) for c in cpus]
    busy = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    total = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return round(100 * busy / total, 1) if total else 0.0


def rss_kib(root: int) -> int:
    """Sum of VmRSS over the process tree, in KiB."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def unwind_on_signals() -> None:
    """Ctrl-C, kill and a closed terminal all raise KeyboardInterrupt, so the caller's `finally`
    stops every child (SIGINT explicitly: a shell's background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def exit_code(name: str, body: Callable[[], int]) -> int:
    """An entry point's exit code: `body()`'s, 3 when something would not start, 130 when
    interrupted (see unwind_on_signals), each said in one line. Cleanup stays in the caller's
    `finally`, which runs after this returns."""
    try:
        return body()
    except StartError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted, stopping everything", file=sys.stderr)
        return 130


def failure_kinds(failures: dict[str, int]) -> str:
    """` {kind: count}` when anything failed, else nothing (for one-line reports)."""
    return f" {failures}" if failures else ""


RESULTS = Path(__file__).resolve().parent / "results"


def write_results(doc: dict[str, Any], latest: str | None, extra: Path | None) -> None:
    """The JSON document to bench/results/LATEST (None: not there) and to `extra`, if given."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    for path in (RESULTS / latest if latest else None, extra):
        if path is not None:
            path.write_text(text)
            print(f"wrote {path}")
