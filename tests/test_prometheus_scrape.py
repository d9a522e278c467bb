"""A real Prometheus server scrapes a real lbd: the exposition is accepted, counters move.

Prometheus (Debian package `prometheus`; `make tools` / bench/install-tools.sh installs it) runs
with a temporary configuration (scrape every second, the target is lbd's stats listener on
127.0.0.1), a temporary TSDB and a free 127.0.0.1 port. The test reads back through its HTTP API
what a dashboard would: the target is up, `lbd_frontend_http_requests_total` grows with the
traffic, the access-log counters arrive. `promtool check metrics` lints the exposition as
Prometheus' own tooling sees it. Every wait is bounded; Prometheus is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_helpers import HOST, Harness, LbdProcess, free_port, lbd_config

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
WAIT = 30.0  # any single wait on Prometheus (it scrapes every second)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not Path(PROMETHEUS).exists(),
        reason="needs the `prometheus` server (Debian package prometheus; bench/install-tools.sh)",
    ),
]


async def start_lbd(h: Harness, tmp_path: Path) -> tuple[LbdProcess, int]:
    mock = await h.mock_backend("ehr1")
    port, stats_port = free_port(), free_port()
    config = lbd_config(port, [mock.port], access_log=str(tmp_path / "access.log"))
    config["global"]["stats"] = {"bind": f"{HOST}:{stats_port}"}
    config["frontends"]["fe"]["modules"] = [{"name": "dmu", "path_prefix": "/dmu"}]
    proc = LbdProcess(config, h.workdir, port)
    h.procs.append((proc, False))
    await proc.start()
    return proc, stats_port


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A Prometheus scraping `target` every second; yields its base URL."""
    web_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "lbd", "static_configs": [{"targets": [target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={HOST}:{web_port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://{HOST}:{web_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def poll(what: str, check: Any, timeout: float = WAIT) -> Any:
    """Call the async `check` every 0.2 s until it returns something truthy (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    for _ in range(int(timeout / 0.2) + 1):
        with contextlib.suppress(aiohttp.ClientError, OSError):
            last = await check()
            if last:
                return last
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def test_prometheus_scrapes_lbd_and_sees_requests_grow(
    harness: Harness, tmp_path: Path
) -> None:
    lbd, stats_port = await start_lbd(harness, tmp_path)
    session = harness.session()
    target = f"{HOST}:{stats_port}"

    async def get(url: str, **params: str) -> Any:
        async with session.get(url, params=params) as resp:
            return await resp.json() if resp.status == 200 else None

    async def traffic(n: int) -> None:
        for i in range(n):
            async with session.get(f"http://{HOST}:{lbd.port}/dmu/patient/{i}") as resp:
                assert resp.status == 200

    await traffic(5)
    async with prometheus(tmp_path, target) as prom:

        async def target_up() -> dict[str, Any] | None:
            body = await get(f"{prom}/api/v1/targets")
            for t in (body or {}).get("data", {}).get("activeTargets", []):
                if t["scrapeUrl"] == f"http://{target}/metrics" and t["health"] == "up":
                    return dict(t)
            return None

        async def requests_total(at_least: float) -> float | None:
            body = await get(
                f"{prom}/api/v1/query", query='lbd_frontend_http_requests_total{frontend="fe"}'
            )
            result = (body or {}).get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) >= at_least:
                return float(result[0]["value"][1])
            return None

        up = await poll("the lbd target to be up", target_up)
        assert up["labels"]["job"] == "lbd" and up["lastError"] == ""
        first = await poll("a first sample", lambda: requests_total(5))

        await traffic(7)
        second = await poll("the counter to grow", lambda: requests_total(first + 7))
        assert second == first + 7  # nothing else talks to this frontend

        # The module histogram and the access-log counters went through the same scrape.
        async def module_count() -> float | None:
            q = 'sum(lbd_module_response_time_seconds_count{frontend="fe",module="dmu"})'
            body = await get(f"{prom}/api/v1/query", query=q)
            result = (body or {}).get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if result else None

        assert await poll("the dmu module histogram", module_count) >= 5

        async def access_lines() -> float | None:
            body = await get(f"{prom}/api/v1/query", query="lbd_access_log_lines_written_total")
            result = (body or {}).get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if result else None

        assert await poll("the access-log counter", access_lines) >= 5


@pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="needs promtool (Debian package prometheus)"
)
async def test_promtool_accepts_the_exposition(harness: Harness, tmp_path: Path) -> None:
    lbd, stats_port = await start_lbd(harness, tmp_path)
    session = harness.session()
    async with session.get(f"http://{HOST}:{lbd.port}/dmu/x") as resp:
        assert resp.status == 200
    async with session.get(f"http://{HOST}:{stats_port}/metrics") as resp:
        text = await resp.read()
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
