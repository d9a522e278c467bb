"""Drive wrk and read its results from a Lua `done` hook that prints one JSON line.

Parsing wrk's human output breaks on unit changes (us/ms/s, k/M); the hook prints raw numbers.
wrk's `errors.status` counts responses with a status of 400 or more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from procs import pinned, run_bounded

MARKER = "WRKJSON "

DONE_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    socket_errors: int  # connect + read + write + timeout
    status_errors: int  # responses with status >= 400


def write_script(directory: Path, name: str = "done", setup: str = "") -> Path:
    """A wrk Lua script: `setup` (method, body, headers, a `request` function) + the done hook."""
    script = directory / f"{name}.lua"
    script.write_text(setup + "\n" + DONE_SCRIPT)
    return script


def parse(stdout: str) -> WrkResult:
    """The WrkResult from wrk's stdout; ValueError when the hook's line is missing."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            break
    else:
        raise ValueError(f"wrk printed no {MARKER.strip()} line:\n{stdout[-2000:]}")
    seconds = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        status_errors=raw["status"],
    )


def run(url: str, connections: int, duration: float, script: Path, cpu: int | None) -> WrkResult:
    """One wrk run (1 thread, `connections` keep-alive connections), bounded in time."""
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
        "-s", str(script), url,
    ]  # fmt: skip
    done = run_bounded(pinned(argv, cpu), timeout=duration + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    return parse(done.stdout)
