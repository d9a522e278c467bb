#!/usr/bin/env python3
"""Where lbd spends its CPU under load: py-spy samples lbd while wrk drives 200B-c50.

    .venv/bin/python bench/pyspy_top.py [--duration 20] [--top 10] [--svg /tmp/lbd.svg]

Rules: the same backend and lbd configuration as the throughput bench (lab.py, configs.py);
py-spy runs with --nonblocking (it never pauses lbd, so the profile does not distort what it
measures) at 250 Hz; the table ranks functions by own samples (the frame on top of the stack),
with the cumulative share beside it. Needs py-spy (`.venv/bin/pip install py-spy`) and root or
ptrace permission. Writes bench/results/latest-profile.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import wrk
from lab import Lab, Placement
from procs import RESULTS, run_bounded
from rss import raise_nofile


def _frame_name(frame: str) -> str:
    """`function (file.py:line)` → `function (file.py)`: lines split one function into many."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def rank(collapsed: str, top: int) -> list[dict[str, object]]:
    """Own and cumulative sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    return [
        {
            "function": f,
            "own_pct": round(100 * n / total, 1),
            "cumulative_pct": round(100 * cumulative[f] / total, 1),
        }
        for f, n in own.most_common(top)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--svg", type=Path, help="also write a flame graph here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="lbd-pyspy-"))
    workdir.chmod(0o755)
    lab = Lab(workdir, Placement.detect(), raise_nofile())
    try:
        lab.start_backend()
        endpoint = lab.start_proxy("lbd")
        script = wrk.write_script(workdir)
        wrk.run(endpoint.url("/200b"), 50, 2, script, lab.placement.load_cpu)  # warm-up
        out = workdir / "lbd.txt"
        argv = [spy, "record", "--pid", str(endpoint.pid), "--nonblocking", "--rate", "250",
                "--duration", str(args.duration), "--format", "raw", "-o", str(out)]  # fmt: skip
        load = threading.Thread(
            target=wrk.run,
            args=(endpoint.url("/200b"), 50, args.duration + 2, script, lab.placement.load_cpu),
        )
        load.start()
        done = run_bounded(argv, timeout=args.duration + 60)
        load.join()
        if done.returncode != 0 or not out.exists():
            print(f"py-spy failed ({done.returncode}): {done.stderr.strip()}", file=sys.stderr)
            return 3
        if args.svg:
            svg = [spy, "record", "--pid", str(endpoint.pid), "--nonblocking", "--duration", "5",
                   "-o", str(args.svg)]  # fmt: skip
            load = threading.Thread(target=wrk.run, args=(endpoint.url("/200b"), 50, 7, script,
                                                          lab.placement.load_cpu))  # fmt: skip
            load.start()
            run_bounded(svg, timeout=60)
            load.join()
        rows = rank(out.read_text(), args.top)
        print(f"lbd under wrk -c50 GET /200b, py-spy {args.duration} s at 250 Hz, by own time:")
        print(f"{'own %':>6} {'cum %':>6}  function")
        for r in rows:
            print(f"{r['own_pct']:>6} {r['cumulative_pct']:>6}  {r['function']}")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest-profile.json").write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
