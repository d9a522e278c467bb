"""Smoke run of the fault and capacity benches (bench/faults.py, bench/capacity.py).

Rules: both benches run for real — real lbd, real mock/nginx backends, real clients, all on
127.0.0.1 — in their shortest settings, and the test reads the JSON they write: every fault
scenario must report zero failed requests and the outcome counts must add up; the capacity run
must have every held connection open and every request answered. Ratios and latencies are not
asserted (timing on a shared machine), only reported by the benches themselves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_tools,
    pytest.mark.skipif(
        not all(shutil.which(t) or shutil.which(t, path="/usr/sbin") for t in ("nginx", "wrk")),
        reason="needs nginx and wrk (bench/install-tools.sh)",
    ),
]


def _run(argv: list[str], out: Path, timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, *argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{argv[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


@pytest.mark.timeout(150)
def test_faults_quick_has_no_failed_requests(tmp_path: Path) -> None:
    doc = _run(
        [str(BENCH / "faults.py"), "--quick", "--duration", "3", "--no-latest"],
        tmp_path / "f.json",
        140,
    )
    faults = doc["faults"]
    assert set(faults) == {"kill", "reload", "slowloris", "slow-module"}
    kill = faults["kill"]
    assert kill["sent"] > 0
    assert kill["failed"] == 0, kill["failures"]
    assert kill["answered"] == kill["sent"]
    assert kill["marked_down_after_s"] is not None, "the killed server was never marked DOWN"
    reload = faults["reload"]
    assert reload["reloads_applied"] == reload["reloads"] == 10, reload["reload_results"]
    assert reload["failed"] == 0 and reload["refused"] == 0, reload["failures"]
    slow = faults["slowloris"]
    assert slow["alone"]["failed"] == 0 and slow["attacked"]["failed"] == 0
    assert slow["slow_got_408"] > 0, "no slow connection was answered 408"
    assert slow["slow_got_other"] == {}
    module = faults["slow-module"]
    assert module["with"]["failed"] == 0 and module["without"]["failed"] == 0
    assert module["dmu_p50_with_ms"] >= 1900, "the 2 s dmu latency was not applied"
    assert all(r["lbd_alive"] for r in faults.values())


@pytest.mark.timeout(120)
def test_capacity_small_answers_every_request(tmp_path: Path) -> None:
    doc = _run(
        [str(BENCH / "capacity.py"), "--connections", "2000", "--duration", "10", "--no-latest"],
        tmp_path / "c.json",
        110,
    )
    cap = doc["capacity"]
    assert cap["opened"] == 2000 and cap["open_failed"] == 0
    assert cap["sent"] >= 4000  # a GET when opened, then at least one more at a 5 s interval
    assert cap["answered"] == cap["sent"] and cap["failed"] == 0, cap["failures"]
    assert cap["closed_while_idle"] == 0, "lbd closed held keep-alive connections"
    assert cap["rss_loaded_kib"] > 0 and cap["bytes_per_connection"] is not None
    assert cap["probe_alone"]["errors"] == 0 and cap["probe_while_held"]["errors"] == 0
    assert cap["lbd_alive"]
