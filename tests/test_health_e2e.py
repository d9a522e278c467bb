"""Health checks end to end: a real lbd process, real mock EHR backends, real clients, `lbd ctl`.

Timing rule: a server must leave rotation within (fall + 1) × interval and come back within
(rise + 1) × interval, plus MARGIN for a loaded CI machine; nothing asserts that it was fast.
The transition lines are read from lbd's stderr and must appear exactly once each.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from typing import Any

import aiohttp
import yaml
from e2e_helpers import HOST, REPO, Harness, LbdProcess, free_port, lbd_config, wait_until

from lbd.mock.app import RunningMock

INTERVAL = 0.2
RISE = 2
FALL = 2
MARGIN = 3.0  # seconds on top of the protocol bound, for slow machines
CHECK = {"type": "http", "path": "/health", "interval": "200ms", "rise": RISE, "fall": FALL}
DOWN_BOUND = (FALL + 1) * INTERVAL + MARGIN
UP_BOUND = (RISE + 1) * INTERVAL + MARGIN


async def start_lbd(
    h: Harness, servers: list[dict[str, Any]], **backend: Any
) -> tuple[LbdProcess, str]:
    """lbd with one backend `app` holding `servers`, an admin socket, and its URL."""
    port = free_port()
    config = lbd_config(port, [], backend={"health_check": CHECK, **backend})
    config["backends"]["app"]["servers"] = servers
    config["global"]["admin_socket"] = str(h.workdir / "admin.sock")
    proc = LbdProcess(config, h.workdir, port)
    h.procs.append((proc, False))
    await proc.start()
    return proc, f"http://{HOST}:{port}"


def srv(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": f"{HOST}:{port}", **extra}


async def ctl(proc: LbdProcess, *words: str, ok: bool = True) -> str:
    """`lbd ctl -c FILE WORDS…`, without blocking the loop the mock backends run on; `ok`:
    the command must succeed (else it must fail)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbd",
        "ctl",
        "-c",
        str(proc.path),
        *words,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert (child.returncode == 0) == ok, (child.returncode, out, err)
    return out.decode()


def status_of(show_servers: str, ref: str) -> str:
    for line in show_servers.splitlines():
        if line.startswith(ref + " "):
            return line.split()[2]
    raise AssertionError(f"{ref} not in:\n{show_servers}")


def lines(proc: LbdProcess, text: str) -> list[str]:
    return [line for line in proc.stderr().splitlines() if text in line]


async def wait_line(proc: LbdProcess, text: str, timeout: float, count: int = 1) -> float:
    """Wait until `text` appears `count` times in lbd's stderr; returns the seconds waited."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_until(lambda: len(lines(proc, text)) >= count, timeout, repr(text))
    return loop.time() - t0


async def spread(session: aiohttp.ClientSession, url: str, n: int) -> Counter[str]:
    """Send n requests one after the other; count the answering server (or the status)."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        async with session.get(url + "/accueil/patient") as resp:
            await resp.read()
            seen[resp.headers.get("X-Server", str(resp.status))] += 1
    return seen


async def set_health(mock: RunningMock, status: int) -> None:
    mock.state.behaviour.health_status = status


# --- tests ---------------------------------------------------------------------------------------


async def test_http_check_takes_a_server_out_of_rotation_and_back(harness: Harness) -> None:
    mocks = [await harness.mock_backend(f"app{i}") for i in (1, 2, 3)]
    proc, url = await start_lbd(harness, [srv(m.state.name, m.port) for m in mocks])
    session = harness.session()
    assert set(await spread(session, url, 6)) == {"app1", "app2", "app3"}

    await set_health(mocks[1], 500)
    waited = await wait_line(proc, "Server app/app2 is DOWN", DOWN_BOUND)
    assert waited < DOWN_BOUND
    assert set(await spread(session, url, 9)) == {"app1", "app3"}
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "DOWN"

    await set_health(mocks[1], 200)
    waited = await wait_line(proc, "Server app/app2 is UP", UP_BOUND)
    assert waited < UP_BOUND
    assert set(await spread(session, url, 6)) == {"app1", "app2", "app3"}
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "UP"

    await asyncio.sleep(3 * INTERVAL)  # more checks: no line repeats
    down, up = lines(proc, "is DOWN"), lines(proc, "is UP")
    assert len(down) == 1 and len(up) == 1, proc.stderr()
    assert re.search(
        r"Server app/app2 is DOWN, reason: Layer7 wrong status, code: 500, "
        r"check duration: \d+ms\. 2 active and 0 backup servers left\.$",
        down[0],
    ), down[0]
    assert re.search(
        r"Server app/app2 is UP, reason: Layer7 check passed, code: 200, "
        r"check duration: \d+ms\. 3 active and 0 backup servers online\.$",
        up[0],
    ), up[0]
    health = await ctl(proc, "show", "health")
    # chkfail is 1 or 2: one failure is enough while the initial UP is still unconfirmed
    assert re.search(r"^app/app2 UP L7OK 200 \d+ [12] 1 \d+$", health, re.M), health


async def test_tcp_check_marks_a_closed_port_down(harness: Harness) -> None:
    mock = await harness.mock_backend("app1")
    closed = free_port()
    proc, url = await start_lbd(
        harness,
        [srv("app1", mock.port), srv("app2", closed)],
        health_check={"type": "tcp", "interval": "200ms", "rise": RISE, "fall": FALL},
    )
    await wait_line(proc, "Server app/app2 is DOWN", DOWN_BOUND)
    [line] = lines(proc, "is DOWN")
    assert re.search(
        r'Server app/app2 is DOWN, reason: Layer4 connection problem, info: "Connection refused", '
        r"check duration: \d+ms\. 1 active and 0 backup servers left\.$",
        line,
    ), line
    assert set(await spread(harness.session(), url, 6)) == {"app1"}
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "DOWN"


async def test_maint_takes_nothing_while_checks_run(harness: Harness) -> None:
    m1, m2 = await harness.mock_backend("app1"), await harness.mock_backend("app2")
    proc, url = await start_lbd(harness, [srv("app1", m1.port), srv("app2", m2.port)])
    assert "ready -> maint" in await ctl(proc, "set", "server", "app/app1", "state", "maint")
    served = m1.state.counters.requests_total - m1.state.counters.health_checks
    checks = m1.state.counters.health_checks
    assert set(await spread(harness.session(), url, 8)) == {"app2"}
    await wait_until(lambda: m1.state.counters.health_checks >= checks + 3, what="checks in MAINT")
    assert m1.state.counters.requests_total - m1.state.counters.health_checks == served

    await set_health(m1, 503)  # health keeps being tracked under MAINT
    await wait_line(proc, "Server app/app1 is DOWN", DOWN_BOUND)
    shown = await ctl(proc, "show", "servers")
    assert status_of(shown, "app/app1") == "MAINT"
    await ctl(proc, "set", "server", "app/app1", "state", "ready")
    assert status_of(await ctl(proc, "show", "servers"), "app/app1") == "DOWN"
    assert set(await spread(harness.session(), url, 4)) == {"app2"}


async def test_backup_takes_over_then_no_server_is_logged_once(harness: Harness) -> None:
    active, spare = await harness.mock_backend("app1"), await harness.mock_backend("spare")
    proc, url = await start_lbd(
        harness, [srv("app1", active.port), srv("spare", spare.port, backup=True)]
    )
    session = harness.session()
    assert set(await spread(session, url, 4)) == {"app1"}

    await set_health(active, 500)
    await wait_line(proc, "Server app/app1 is DOWN", DOWN_BOUND)
    assert "0 active and 1 backup servers left." in lines(proc, "is DOWN")[0]
    assert set(await spread(session, url, 4)) == {"spare"}

    await set_health(spare, 500)
    await wait_line(proc, "Server app/spare is DOWN", DOWN_BOUND)
    assert "0 active and 0 backup servers left." in lines(proc, "app/spare is DOWN")[0]
    assert await spread(session, url, 5) == Counter({"503": 5})
    assert len(lines(proc, "backend app has no server available!")) == 1  # not per request

    await set_health(spare, 200)
    await wait_line(proc, "Server app/spare is UP", UP_BOUND)
    assert set(await spread(session, url, 2)) == {"spare"}
    await set_health(spare, 500)  # a second outage is reported again
    await wait_line(proc, "Server app/spare is DOWN", DOWN_BOUND, count=2)
    assert await spread(session, url, 3) == Counter({"503": 3})
    assert len(lines(proc, "backend app has no server available!")) == 2


async def test_disable_and_enable_health_from_the_admin_socket(harness: Harness) -> None:
    m1, m2 = await harness.mock_backend("app1"), await harness.mock_backend("app2")
    proc, url = await start_lbd(harness, [srv("app1", m1.port), srv("app2", m2.port)])
    await set_health(m2, 503)
    await wait_line(proc, "Server app/app2 is DOWN", DOWN_BOUND)

    assert (await ctl(proc, "disable", "health", "app/app2")).strip() == "app/app2 health disabled"
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "UP"
    assert "app/app2 UP_(health_disabled)" in await ctl(proc, "show", "health")
    assert set(await spread(harness.session(), url, 6)) == {"app1", "app2"}

    answer = await ctl(proc, "enable", "health", "app/app2")
    assert answer.strip() == "app/app2 health enabled (UP 1/2)"
    await wait_line(proc, "Server app/app2 is DOWN", DOWN_BOUND, count=2)
    assert "no such server" in await ctl(proc, "disable", "health", "app/nope", ok=False)


async def test_reload_keeps_health_state(harness: Harness) -> None:
    m1, m2 = await harness.mock_backend("app1"), await harness.mock_backend("app2")
    proc, _ = await start_lbd(harness, [srv("app1", m1.port), srv("app2", m2.port)])
    await set_health(m2, 503)
    await wait_line(proc, "Server app/app2 is DOWN", DOWN_BOUND)

    proc.config["backends"]["app"]["health_check"] = {**CHECK, "interval": "250ms"}
    proc.path.write_text(yaml.safe_dump(proc.config, sort_keys=False))
    assert "rejected" not in await ctl(proc, "reload")
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "DOWN"
    await asyncio.sleep(3 * INTERVAL)
    assert status_of(await ctl(proc, "show", "servers"), "app/app2") == "DOWN"
    assert lines(proc, "is UP") == [] and len(lines(proc, "is DOWN")) == 1


async def test_passive_mark_down_then_active_checks_bring_it_back(harness: Harness) -> None:
    m1, m2 = await harness.mock_backend("app1"), await harness.mock_backend("app2")
    proc, url = await start_lbd(
        harness,
        [srv("app1", m1.port), srv("app2", m2.port)],
        observe={"mode": "layer7", "error_limit": 3, "on_error": "mark-down"},
    )
    # app1 answers 500 on the EHR pages while its /health stays 200: only traffic can tell.
    m1.state.behaviour.module_error_rate["accueil"] = 1.0
    await spread(harness.session(), url, 8)  # 4 of them reach app1: the limit is 3
    await wait_line(proc, "Server app/app1 is DOWN, reason: Health analyze", 2.0)
    [line] = lines(proc, "is DOWN")
    assert 'info: "Detected 3 consecutive errors, last one was: Wrong http response (500)"' in line
    # One state for active and passive: the passing /health checks bring it back.
    await wait_line(proc, "Server app/app1 is UP, reason: Layer7 check passed", UP_BOUND)
