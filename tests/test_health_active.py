"""Active checks and the health manager in-process: real sockets, real mock EHR backends, the
manager driving a real runtime (no lbd process; the end-to-end tests are in test_health_e2e.py).

Every wait is bounded (wait_until); intervals are tens of milliseconds so the file runs in a
few seconds, and no assertion depends on a check being fast, only on it happening.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml
from e2e_helpers import HOST, RawBackend, Wire, chunked, free_port, response, wait_until

from lbd.config.load import load_config_text
from lbd.config.schema import Address, HealthCheck
from lbd.health.active import next_interval, probe
from lbd.health.manager import HealthError, HealthManager
from lbd.health.state import HealthState, Op
from lbd.mock.app import RunningMock, start_mock
from lbd.runtime import Runtime, RuntimeHolder, build_runtime

FAST = "40ms"


@pytest.fixture
async def mocks() -> AsyncIterator[Callable[[str], Any]]:
    started: list[RunningMock] = []

    async def make(name: str) -> RunningMock:
        mock = await start_mock(name, HOST, 0)
        started.append(mock)
        return mock

    yield make
    for mock in started:
        await mock.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Any]]:
    started: list[RawBackend] = []

    async def make(handler: Any) -> RawBackend:
        backend = await RawBackend(handler).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


def http_check(**kw: Any) -> HealthCheck:
    return HealthCheck(**{"type": "http", "interval": 1.0, **kw})


# --- probes --------------------------------------------------------------------------------------


async def test_tcp_probe_passes_on_connect_and_fails_on_refused(mocks: Any) -> None:
    mock = await mocks("app1")
    ok = await probe(Address(HOST, mock.port), HealthCheck(type="tcp"))
    assert (ok.ok, ok.status) == (True, "L4OK")
    bad = await probe(Address(HOST, free_port()), HealthCheck(type="tcp"))
    assert (bad.ok, bad.status, bad.info) == (False, "L4CON", "Connection refused")


async def test_http_probe_status_and_body(mocks: Any) -> None:
    mock = await mocks("app1")
    addr = Address(HOST, mock.port)
    ok = await probe(addr, http_check())
    assert (ok.ok, ok.status, ok.code) == (True, "L7OK", 200)
    assert (await probe(addr, http_check(expect_body="OK"))).ok
    body = await probe(addr, http_check(expect_body="ready"))
    assert (body.ok, body.status, body.code) == (False, "L7RSP", 200)
    mock.state.behaviour.health_status = 503
    bad = await probe(addr, http_check())
    assert (bad.ok, bad.status, bad.code) == (False, "L7STS", 503)
    ranged = await probe(addr, http_check(expect_status=tuple(range(200, 600))))
    assert ranged.ok
    head = await probe(addr, http_check(method="HEAD", expect_status=(503,)))
    assert head.ok


async def test_http_probe_request_bytes(raw: Any) -> None:
    backend = await raw(_answer(response(204)))
    check = http_check(path="/ready?deep=1", host="ehr.example", expect_status=(204,))
    assert (await probe(Address(HOST, backend.port), check)).ok
    sent = bytes(backend.wires[0].received)
    assert sent.startswith(b"GET /ready?deep=1 HTTP/1.1\r\nHost: ehr.example\r\n")
    assert b"\r\nConnection: close\r\n" in sent


async def test_http_probe_default_host_is_the_server_address(raw: Any) -> None:
    backend = await raw(_answer(response(200)))
    assert (await probe(Address(HOST, backend.port), http_check())).ok
    assert f"Host: {HOST}:{backend.port}\r\n".encode() in bytes(backend.wires[0].received)


async def test_http_probe_finds_text_across_chunks(raw: Any) -> None:
    body = chunked([b"sta", b"tus=up"])  # the text spans two chunks: searched de-chunked
    backend = await raw(
        _answer(response(200, body, [("Transfer-Encoding", "chunked")], content_length=False))
    )
    assert (await probe(Address(HOST, backend.port), http_check(expect_body="status=up"))).ok


async def test_http_probe_failures(raw: Any) -> None:
    silent = await raw(_silent)
    timed_out = await probe(Address(HOST, silent.port), http_check(timeout=0.2))
    assert (timed_out.ok, timed_out.status) == (False, "L7TOUT")
    assert timed_out.duration is not None and timed_out.duration >= 0.2

    closing = await raw(_read_and_close)
    empty = await probe(Address(HOST, closing.port), http_check())
    assert (empty.status, empty.info) == ("L7RSP", "empty response")

    garbage = await raw(_answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    bad = await probe(Address(HOST, garbage.port), http_check())
    assert bad.status == "L7RSP" and bad.info is not None and bad.info.startswith("bad response")


def test_next_interval_by_state() -> None:
    class T:
        up = True

    check = HealthCheck(interval=2.0, fastinterval=0.5, downinterval=10.0, rise=2, fall=2)
    h = HealthState(T(), rise=2, fall=2, checked=True)
    assert h.op is Op.GOING_DOWN and next_interval(check, h) == 0.5
    h.success()
    assert h.op is Op.UP and next_interval(check, h) == 2.0
    h.failure("x")
    h.failure("x")
    assert h.op is Op.DOWN and next_interval(check, h) == 10.0
    h.success()
    assert h.op is Op.GOING_UP and next_interval(check, h) == 0.5
    plain = HealthCheck(interval=3.0)
    assert next_interval(plain, h) == 3.0


# --- the manager on a real runtime ---------------------------------------------------------------


class Lbd:
    """A runtime plus a HealthManager, reloadable with a new YAML text."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.manager = HealthManager(rng)
        self.holder: RuntimeHolder | None = None

    def start(self, config: dict[str, Any]) -> Runtime:
        rt = build_runtime(_config(config), None, asyncio.get_running_loop())
        self.holder = RuntimeHolder(rt)
        self.manager.start(self.holder)
        return rt

    def reload(self, config: dict[str, Any]) -> Runtime:
        assert self.holder is not None
        old = self.holder.runtime
        new = build_runtime(_config(config), old, asyncio.get_running_loop())
        self.holder.runtime = new
        self.manager.reload(old, new)
        return new

    @property
    def runtime(self) -> Runtime:
        assert self.holder is not None
        return self.holder.runtime


@pytest.fixture
async def lbd() -> AsyncIterator[Lbd]:
    instance = Lbd()
    yield instance
    await instance.manager.stop()


def backend_config(
    ports: dict[str, int], check: dict[str, Any] | None = None, **backend: Any
) -> dict[str, Any]:
    hc = {"type": "http", "interval": FAST, "rise": 2, "fall": 2, **(check or {})}
    return {
        "frontends": {"fe": {"bind": [f"{HOST}:1"], "default_backend": "app"}},
        "backends": {
            "app": {
                "health_check": hc,
                "servers": [{"name": n, "address": f"{HOST}:{p}"} for n, p in ports.items()],
                **backend,
            }
        },
    }


def event_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lbd.events" and text in r.message]


async def test_manager_marks_down_and_up_once_and_tells_the_balancer(
    lbd: Lbd, mocks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lbd.events")
    m1, m2 = await mocks("app1"), await mocks("app2")
    rt = lbd.start(backend_config({"s1": m1.port, "s2": m2.port}))
    s2 = rt.servers[("app", "s2")]
    await wait_until(lambda: s2.health.op is Op.UP, what="s2 confirmed UP")
    m2.state.behaviour.health_status = 500
    await wait_until(lambda: not s2.up, what="s2 DOWN")
    be = rt.backends["app"]
    assert {be.pick(None, None).name for _ in range(10)} == {"s1"}  # type: ignore[union-attr]
    await asyncio.sleep(0.2)  # more failed checks while DOWN: no more lines
    down = event_lines(caplog, "is DOWN")
    assert len(down) == 1
    assert down[0].startswith("Server app/s2 is DOWN, reason: Layer7 wrong status, code: 500, ")
    assert down[0].endswith("ms. 1 active and 0 backup servers left.")
    m2.state.behaviour.health_status = 200
    await wait_until(lambda: s2.up, what="s2 UP again")
    await asyncio.sleep(0.2)
    up = event_lines(caplog, "is UP")
    assert len(up) == 1
    assert up[0].startswith("Server app/s2 is UP, reason: Layer7 check passed, code: 200, ")
    assert up[0].endswith("ms. 2 active and 0 backup servers online.")
    assert {be.pick(None, None).name for _ in range(10)} == {"s1", "s2"}  # type: ignore[union-attr]
    assert (s2.health.downs, s2.health.check_failures) == (1, 2)
    assert s2.health.downtime() > 0


async def test_reload_keeps_unchanged_tasks_and_state(lbd: Lbd, mocks: Any) -> None:
    m1, m2 = await mocks("app1"), await mocks("app2")
    m2.state.behaviour.health_status = 503
    config = backend_config({"s1": m1.port, "s2": m2.port})
    rt = lbd.start(config)
    s1, s2 = rt.servers[("app", "s1")], rt.servers[("app", "s2")]
    await wait_until(lambda: not s2.up, what="s2 DOWN")
    checkers = {s: lbd.manager.checker(s) for s in (s1, s2)}

    rt2 = lbd.reload(config)  # nothing changed: same tasks, same state
    assert rt2.servers[("app", "s2")] is s2
    assert {s: lbd.manager.checker(s) for s in (s1, s2)} == checkers
    assert not s2.up

    changed = backend_config({"s1": m1.port, "s2": m2.port}, {"interval": "30ms"})
    lbd.reload(changed)  # new settings: new tasks, state kept (no unconfirmed reset)
    new_checker, old_checker = lbd.manager.checker(s2), checkers[s2]
    assert new_checker is not None and old_checker is not None
    assert new_checker is not old_checker and not old_checker.running
    assert new_checker.running and new_checker.check.interval == 0.03
    assert not s2.up and s2.health.op is Op.DOWN

    lbd.reload(backend_config({"s1": m1.port}, {"interval": "30ms"}))  # s2 removed
    assert lbd.manager.checker(s2) is None and s2.health.wake is None
    assert lbd.manager.checker(s1) is not None


async def test_init_state_down_applies_to_new_servers_only(lbd: Lbd, mocks: Any) -> None:
    m1, m2 = await mocks("app1"), await mocks("app2")
    config = backend_config({"s1": m1.port}, {"init_state": "down", "interval": "2s"})
    rt = lbd.start(config)
    s1 = rt.servers[("app", "s1")]
    assert not s1.up  # before any check ran: no traffic until one passes
    s1.health.success()  # as if the first check passed
    assert s1.up
    rt2 = lbd.reload(
        backend_config({"s1": m1.port, "s2": m2.port}, {"init_state": "down", "interval": "2s"})
    )
    assert rt2.servers[("app", "s1")] is s1 and s1.up  # kept, not reset
    assert not rt2.servers[("app", "s2")].up  # new: starts down


async def test_check_false_and_per_server_override(lbd: Lbd, mocks: Any) -> None:
    m1, m2, m3 = await mocks("app1"), await mocks("app2"), await mocks("app3")
    for m in (m1, m2, m3):
        m.state.behaviour.health_status = 503
    config = backend_config({"s1": m1.port, "s2": m2.port, "s3": m3.port})
    servers = config["backends"]["app"]["servers"]
    servers[1]["check"] = False
    servers[2]["health_check"] = {"expect_status": [503]}  # inherits type/path/interval
    rt = lbd.start(config)
    s1, s2, s3 = (rt.servers[("app", n)] for n in ("s1", "s2", "s3"))
    await wait_until(lambda: not s1.up, what="s1 DOWN")
    await wait_until(lambda: s3.health.op is Op.UP, what="s3 confirmed UP (503 expected)")
    assert s2.up and lbd.manager.checker(s2) is None and s2.health.display() == "no check"
    assert m2.state.counters.health_checks == 0


async def test_checks_keep_running_in_maint(lbd: Lbd, mocks: Any) -> None:
    m1 = await mocks("app1")
    rt = lbd.start(backend_config({"s1": m1.port}))
    s1 = rt.servers[("app", "s1")]
    s1.admin = "maint"
    seen = m1.state.counters.health_checks
    await wait_until(lambda: m1.state.counters.health_checks >= seen + 3, what="checks in MAINT")
    m1.state.behaviour.health_status = 500
    await wait_until(lambda: not s1.up, what="DOWN while in MAINT")
    assert s1.status() == "MAINT"
    s1.admin = "ready"
    assert s1.status() == "DOWN" and not s1.usable()


async def test_disable_and_enable_health(lbd: Lbd, mocks: Any) -> None:
    m1 = await mocks("app1")
    m1.state.behaviour.health_status = 500
    rt = lbd.start(backend_config({"s1": m1.port}))
    s1 = rt.servers[("app", "s1")]
    await wait_until(lambda: not s1.up, what="s1 DOWN")
    assert lbd.manager.disable(s1) == "app/s1 health disabled"
    assert s1.up and lbd.manager.checker(s1) is None
    seen = m1.state.counters.health_checks
    await asyncio.sleep(0.2)
    assert m1.state.counters.health_checks <= seen + 1  # at most one check already in flight
    assert s1.up
    lbd.reload(backend_config({"s1": m1.port}))  # the operator's choice survives a reload
    assert s1.up and lbd.manager.checker(s1) is None
    assert lbd.manager.enable(s1) == "app/s1 health enabled (UP 1/2)"
    await wait_until(lambda: not s1.up, what="s1 DOWN after enable")
    no_check = backend_config({"s1": m1.port})
    no_check["backends"]["app"]["servers"][0]["check"] = False
    lbd.reload(no_check)
    assert s1.up  # a server that loses its check is UP
    with pytest.raises(HealthError):
        lbd.manager.disable(s1)


class LateRng(random.Random):
    """Puts every first check at the end of its interval (the default spreads them)."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_passive_fastinter_brings_the_next_check_forward(mocks: Any) -> None:
    m1 = await mocks("app1")
    instance = Lbd(LateRng())
    try:
        config = backend_config(
            {"s1": m1.port},
            {"interval": "30s", "fastinterval": "50ms"},
            observe={"mode": "layer7", "error_limit": 2, "on_error": "fastinter"},
        )
        rt = instance.start(config)
        s1 = rt.servers[("app", "s1")]
        assert s1.observer is not None
        from lbd.health import passive

        passive.response(s1, 503)
        await asyncio.sleep(0.2)
        assert m1.state.counters.health_checks == 0  # one error is below the limit
        passive.response(s1, 503)
        await wait_until(lambda: m1.state.counters.health_checks == 1, what="early check")
        assert s1.health.op is Op.UP  # the early check passed and confirmed UP
    finally:
        await instance.manager.stop()


async def test_observe_is_ignored_without_check(
    lbd: Lbd, mocks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    m1 = await mocks("app1")
    config = backend_config({"s1": m1.port}, observe={"mode": "layer4"})
    config["backends"]["app"]["servers"][0]["check"] = False
    rt = lbd.start(config)
    assert rt.servers[("app", "s1")].observer is None
    assert event_lines(caplog, "observe ignored for s1")


# --- helpers -------------------------------------------------------------------------------------


def _config(data: dict[str, Any]) -> Any:
    return load_config_text(yaml.safe_dump(data, sort_keys=False), "test.yaml")


def _answer(data: bytes) -> Any:
    async def handler(wire: Wire) -> None:
        await wire.readuntil(b"\r\n\r\n")
        await wire.send(data)

    return handler


async def _silent(wire: Wire) -> None:
    await wire.read_until_eof(timeout=10)


async def _read_and_close(wire: Wire) -> None:
    await wire.readuntil(b"\r\n\r\n")
