"""Syscalls per request: `strace -c -f` attached to a proxy's process tree during a short wrk run.

strace slows the proxy down a lot, so the req/s seen here mean nothing; the count of system calls
per request does (it is what the event loop costs the kernel: reads, writes, epoll, timers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import wrk
from lab import Endpoint, Placement, tool
from procs import process_tree


@dataclass(frozen=True)
class SyscallCount:
    proxy: str
    requests: int
    syscalls: int
    per_request: float
    top: dict[str, float] = field(default_factory=dict)  # syscall → calls per request


def parse_strace_summary(text: str) -> dict[str, int]:
    """{syscall: calls} from `strace -c` output.

    Rows are `%time seconds usecs/call calls [errors] name`; the `total` row is skipped.
    """
    calls: dict[str, int] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) not in (5, 6) or cols[-1] == "total":
            continue
        try:
            float(cols[0])
            calls[cols[-1]] = int(cols[3])
        except ValueError:
            continue
    return calls


def _wait_attached(errfile: Path, expected: int, timeout: float = 5.0) -> None:
    """strace prints one "attached" line per thread; wait for at least one per process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if errfile.exists() and errfile.read_text().count("attached") >= expected:
            return
        time.sleep(0.05)
    raise RuntimeError(f"strace did not attach: {errfile.read_text() if errfile.exists() else ''}")


def _stop_strace(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT makes strace detach and write its summary; SIGKILL if it does not within 10s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def count(
    endpoint: Endpoint,
    workdir: Path,
    script: Path,
    placement: Placement,
    duration: float = 3.0,
    connections: int = 10,
) -> SyscallCount:
    """Attach, run wrk on /200b for `duration` seconds, detach, divide by requests served."""
    assert endpoint.pid is not None, "direct has no proxy process to trace"
    pids = process_tree(endpoint.pid)
    out, err = workdir / f"strace-{endpoint.name}.txt", workdir / f"strace-{endpoint.name}.err"
    argv = [tool("strace"), "-c", "-f", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    with err.open("wb") as errfh:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=errfh, start_new_session=True
        )
    try:
        _wait_attached(err, len(pids))
        result = wrk.run(endpoint.url("/200b"), connections, duration, script, placement.load_cpu)
    finally:
        _stop_strace(proc)
    calls = parse_strace_summary(out.read_text())
    total = sum(calls.values())
    n = max(result.requests, 1)
    top = sorted(calls.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return SyscallCount(
        proxy=endpoint.name,
        requests=result.requests,
        syscalls=total,
        per_request=round(total / n, 2),
        top={name: round(c / n, 3) for name, c in top},
    )


def render(counts: list[SyscallCount]) -> str:
    lines = ["== syscalls per request (strace -c -f, GET /200b, keep-alive) =="]
    lines.append(f"{'proxy':<8} {'requests':>9} {'syscalls':>9} {'per req':>8}  top (per req)")
    for c in counts:
        top = ", ".join(f"{name} {v:.2f}" for name, v in c.top.items())
        lines.append(f"{c.proxy:<8} {c.requests:>9} {c.syscalls:>9} {c.per_request:>8.2f}  {top}")
    return "\n".join(lines)
