"""The rise/fall state machine and passive observation, driven directly (no I/O, no loop).

Style 2 of STYLE.md: drive transitions, assert the resulting state; an illegal transition must
raise and leave every field exactly as it was.
"""

from __future__ import annotations

from typing import Any

import pytest

from lbd.config.schema import Address, Observe, Server
from lbd.health import passive
from lbd.health.passive import Observer
from lbd.health.state import CheckResult, HealthState, IllegalTransition, Op
from lbd.proxy.connpool import idle_pool
from lbd.state import ServerState


class Clock:
    """An injected monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Target:
    up = True


class Changes:
    """Records on_change calls: (up after the change, reason)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []

    def __call__(self, health: HealthState, reason: str) -> None:
        self.calls.append((health.up, reason))


def machine(
    rise: int = 2, fall: int = 3, init_state: Any = "up", clock: Clock | None = None
) -> tuple[HealthState, Changes]:
    changes = Changes()
    h = HealthState(
        Target(),
        rise=rise,
        fall=fall,
        init_state=init_state,
        checked=True,
        clock=clock or Clock(),
        on_change=changes,
    )
    return h, changes


def snapshot(h: HealthState) -> dict[str, Any]:
    fields = [f for f in HealthState.__slots__ if f not in ("clock", "on_change", "target")]
    return {f: getattr(h, f) for f in fields} | {"up": h.up}


def server_state(name: str = "s1") -> ServerState:
    config = Server(name=name, address=Address("127.0.0.1", 1))
    return ServerState("app", config, idle_pool(config.address))  # never connects here


# --- rise / fall sequences ---------------------------------------------------------------------


def test_fall_then_rise_sequence_and_displays() -> None:
    h, changes = machine(rise=2, fall=3)
    h.success()  # confirm the initial unconfirmed UP
    assert (h.op, h.display(), h.up) == (Op.UP, "UP", True)
    steps = []
    for ok in (False, False, True, False, False, False, False, True, False, True, True, True):
        if ok:
            h.success("ok")
        else:
            h.failure("bad")
        steps.append(h.display())
    assert steps == [
        "UP 2/3",
        "UP 1/3",
        "UP",  # a success in GOING_DOWN confirms UP again
        "UP 2/3",
        "UP 1/3",
        "DOWN",  # third consecutive failure
        "DOWN",  # failures while DOWN change nothing
        "DOWN 1/2",
        "DOWN",  # a failure while GOING_UP falls back
        "DOWN 1/2",
        "UP",  # rise reached
        "UP",
    ]
    assert changes.calls == [(False, "bad"), (True, "ok")]  # one call per UP<->DOWN change


def test_init_state_up_is_unconfirmed() -> None:
    h, changes = machine(rise=2, fall=3, init_state="up")
    assert (h.op, h.count, h.display(), h.up) == (Op.GOING_DOWN, 2, "UP 1/3", True)
    h.failure("Layer4 connection problem")
    assert (h.op, h.up) == (Op.DOWN, False)
    assert changes.calls == [(False, "Layer4 connection problem")]


def test_init_state_down_goes_up_at_the_first_success() -> None:
    h, changes = machine(rise=3, fall=2, init_state="down")
    assert (h.op, h.display(), h.up) == (Op.GOING_UP, "DOWN 2/3", False)
    assert changes.calls == []  # the initial state is not a transition
    h.success("passed")
    assert (h.op, h.up) == (Op.UP, True)
    assert changes.calls == [(True, "passed")]


@pytest.mark.parametrize("init_state", ["up", "down"])
def test_rise_and_fall_of_one(init_state: Any) -> None:
    h, changes = machine(rise=1, fall=1, init_state=init_state)
    assert h.op is (Op.UP if init_state == "up" else Op.DOWN)
    for _ in range(3):
        h.failure("f")
        assert (h.op, h.up) == (Op.DOWN, False)
        h.success("s")
        assert (h.op, h.up) == (Op.UP, True)
    first_down = [False] if init_state == "up" else []  # a down server has nothing to lose
    assert [up for up, _ in changes.calls] == [*first_down, True, False, True, False, True]


def test_check_failures_counts_only_while_not_down() -> None:
    h, _ = machine(rise=2, fall=2)
    h.success()
    for _ in range(5):
        h.failure("x")
    assert (h.check_failures, h.downs) == (2, 1)  # HAProxy's chkfail / chkdown
    h.success()  # GOING_UP
    h.failure("x")  # counted: the server was not fully DOWN
    assert h.check_failures == 3


def test_record_keeps_the_last_result() -> None:
    h, changes = machine(rise=1, fall=1)
    bad = CheckResult(False, "L7STS", code=500, duration=0.003)
    h.record(bad)
    assert (h.checks, h.last_result, h.up) == (1, bad, False)
    assert changes.calls == [(False, "Layer7 wrong status, code: 500, check duration: 3ms")]


# --- passive actions feed the same machine -------------------------------------------------------


def test_sudden_death_leaves_one_failure() -> None:
    h, _ = machine(rise=2, fall=3)
    h.success()
    h.sudden_death("analyze")
    assert (h.display(), h.up) == ("UP 1/3", True)
    h.sudden_death("analyze")  # already at the last chance: down
    assert (h.op, h.up) == (Op.DOWN, False)


def test_sudden_death_with_fall_one_marks_down() -> None:
    h, _ = machine(rise=2, fall=1)
    h.success()
    h.sudden_death("analyze")
    assert h.op is Op.DOWN


def test_mark_down_from_any_up_state_then_rise_brings_back() -> None:
    h, changes = machine(rise=2, fall=5)
    h.success()
    h.mark_down("analyze")
    assert (h.op, h.up, h.downs) == (Op.DOWN, False, 1)
    h.mark_down("again")  # already down: nothing
    assert h.downs == 1
    h.success("a")
    h.success("b")
    assert h.up
    assert changes.calls == [(False, "analyze"), (True, "b")]


def test_observer_actions_and_reset() -> None:
    server = server_state()
    server.health.reconfigure(2, 3)
    server.health.start_checking("up")
    server.health.success()
    server.observer = Observer(Observe("layer7", 3, "fail-check"), server.health)
    woken: list[int] = []
    server.health.wake = lambda: woken.append(1)

    passive.response(server, 500)
    passive.response(server, 502)
    passive.response(server, 200)  # a good answer resets the consecutive count
    assert server.observer.errors == 0
    for _ in range(3):
        passive.timeout(server)
    assert (server.health.display(), woken) == ("UP 2/3", [1])  # one failed check, fastinter
    assert server.observer.errors == 0  # restarts after the action
    last = server.health.last_result
    assert last is not None and last.status == "HANA"

    for _ in range(6):
        passive.connect_failed(server, "Connection refused")
    assert (server.health.op, server.up) == (Op.DOWN, False)
    assert server.observer.triggered == 3


def test_observer_ignores_501_505_and_layer7_events_in_layer4_mode() -> None:
    server = server_state()
    server.health.start_checking("up")
    server.health.success()
    server.observer = Observer(Observe("layer7", 2, "mark-down"), server.health)
    passive.response(server, 501)
    passive.response(server, 505)
    passive.response(server, 404)
    assert server.observer.errors == 0
    server.observer = Observer(Observe("layer4", 2, "mark-down"), server.health)
    for _ in range(5):
        passive.response(server, 503)
        passive.timeout(server)
        passive.broken(server, "bad header")
    assert (server.observer.errors, server.up) == (0, True)
    passive.connect_failed(server, "refused")
    passive.connect_failed(server, "refused")
    assert not server.up


def test_observer_mark_down_message() -> None:
    server = server_state()
    changes = Changes()
    server.health.on_change = changes
    server.health.start_checking("up")
    server.observer = Observer(Observe("layer4", 2, "mark-down"), server.health)
    passive.connect_failed(server, "Connection refused")
    passive.connect_failed(server, "Connection refused")
    assert changes.calls == [
        (
            False,
            'Health analyze, info: "Detected 2 consecutive errors, last one was: '
            'L4 unsuccessful connection (Connection refused)"',
        )
    ]


def test_fastinter_action_only_asks_for_a_check() -> None:
    server = server_state()
    server.health.start_checking("up")
    server.observer = Observer(Observe("layer7", 1, "fastinter"), server.health)
    woken: list[int] = []
    server.health.wake = lambda: woken.append(1)
    passive.response(server, 500)
    assert (woken, server.health.display()) == ([1], "UP 1/3")  # state untouched


def test_passive_is_a_no_op_without_observer() -> None:
    server = server_state()
    passive.response(server, 500)
    passive.connect_failed(server, "x")
    passive.timeout(server)
    passive.broken(server, "x")
    assert server.up


# --- admin state and health are independent ---------------------------------------------------


def test_admin_state_and_health_are_independent() -> None:
    server = server_state()
    h = server.health
    h.reconfigure(1, 1)
    h.start_checking("up")
    assert (server.status(), server.usable()) == ("UP", True)
    server.admin = "maint"
    assert (server.status(), server.usable(), server.up) == ("MAINT", False, True)
    h.failure("checks keep running in MAINT")
    assert (server.status(), server.up, h.op) == ("MAINT", False, Op.DOWN)
    server.admin = "ready"
    assert (server.status(), server.usable()) == ("DOWN", False)  # ready, but still down
    server.admin = "drain"
    h.success("back")
    assert (server.status(), server.usable(), server.up) == ("DRAIN", False, True)
    server.admin = "ready"
    assert (server.status(), server.usable()) == ("UP", True)


def test_transitions_do_not_depend_on_admin_state() -> None:
    results = []
    for admin in ("ready", "drain", "maint"):
        server = server_state()
        server.admin = admin
        server.health.reconfigure(2, 2)
        server.health.start_checking("up")
        trace = []
        for ok in (True, False, False, True, True):
            server.health.success() if ok else server.health.failure("x")
            trace.append(server.health.display())
        results.append(trace)
    assert results[0] == results[1] == results[2]


def test_disable_and_enable_health() -> None:
    h, changes = machine(rise=2, fall=2)
    h.failure("down")
    assert not h.up
    h.disable()
    assert (h.up, h.display()) == (True, "UP (health disabled)")
    h.failure("ignored")
    h.mark_down("ignored")
    assert h.up
    h.enable()
    assert (h.display(), h.up) == ("UP 1/2", True)  # up until the first failure
    h.failure("down again")
    assert not h.up
    assert [up for up, _ in changes.calls] == [False, True, False]


def test_unchecked_server_is_up_and_ignores_results() -> None:
    h = HealthState(Target())
    h.failure("x")
    h.mark_down("x")
    assert (h.up, h.display()) == (True, "no check")
    with pytest.raises(IllegalTransition):
        h.disable()


def test_stop_checking_brings_the_server_up() -> None:
    h, changes = machine(rise=2, fall=1)
    h.failure("down")
    h.stop_checking()
    assert (h.up, h.checked, changes.calls[-1]) == (True, False, (True, "health check removed"))


def test_reconfigure_keeps_the_side_and_clamps_progress() -> None:
    h, _ = machine(rise=5, fall=5)
    h.success()
    for _ in range(3):
        h.failure("x")
    assert h.display() == "UP 2/5"
    h.reconfigure(rise=5, fall=3)  # 3 failures already reach the new fall: one left
    assert (h.display(), h.up) == ("UP 1/3", True)
    h.failure("x")
    h.success()
    h.success()
    assert h.display() == "DOWN 2/5"
    h.reconfigure(rise=2, fall=3)
    assert (h.display(), h.up) == ("DOWN 1/2", False)


# --- illegal transitions raise and change nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("start", "op", "count"),
    [
        ("up", Op.GOING_UP, 1),  # UP never moves to the down side's "going" state
        ("down", Op.GOING_DOWN, 1),
        ("up", Op.GOING_DOWN, 0),  # count out of range
        ("up", Op.GOING_DOWN, 3),  # = fall
        ("down", Op.GOING_UP, 2),  # = rise
        ("up", Op.DOWN, 1),  # stable states have count 0
    ],
)
def test_illegal_transition_raises_and_changes_nothing(start: str, op: Op, count: int) -> None:
    h, changes = machine(rise=2, fall=3)
    if start == "up":
        h.success()
    else:
        h.force(Op.DOWN)
        changes.calls.clear()
    before = snapshot(h)
    with pytest.raises(IllegalTransition):
        h.force(op, count)
    assert snapshot(h) == before
    assert changes.calls == []


def test_force_is_refused_when_unchecked_or_disabled() -> None:
    h, _ = machine()
    h.disable()
    before = snapshot(h)
    with pytest.raises(IllegalTransition):
        h.force(Op.DOWN)
    assert snapshot(h) == before


def test_legal_force_behaves_like_a_transition() -> None:
    h, changes = machine(rise=3, fall=3)
    h.force(Op.DOWN, reason="test")
    h.force(Op.GOING_UP, 2)
    h.success("ok")
    assert (h.op, h.up) == (Op.UP, True)
    assert changes.calls == [(False, "test"), (True, "ok")]


# --- downtime with an injected clock ------------------------------------------------------------


def test_downtime_accounting() -> None:
    clock = Clock()
    h, _ = machine(rise=1, fall=1, clock=clock)
    clock.now += 10
    h.failure("down")
    assert h.last_change == 1010.0
    clock.now += 15
    assert h.downtime() == 15.0  # the open period counts
    h.success()
    clock.now += 100
    assert h.downtime() == 15.0  # closed; time up is not counted
    h.failure("down")
    clock.now += 5
    assert h.downtime() == 20.0
    assert h.downtime(now=clock.now + 1) == 21.0
    assert h.downs == 2


def test_initially_down_counts_downtime_from_start() -> None:
    clock = Clock()
    h, _ = machine(rise=2, fall=2, init_state="down", clock=clock)
    clock.now += 4
    h.success()
    assert (h.downtime(), h.downs) == (4.0, 0)  # not an UP->DOWN transition


# --- log wording ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (
            CheckResult(False, "L7STS", code=500, duration=0.0031),
            "Layer7 wrong status, code: 500, check duration: 3ms",
        ),
        (
            CheckResult(False, "L4CON", info="Connection refused", duration=0.0),
            'Layer4 connection problem, info: "Connection refused", check duration: 0ms',
        ),
        (CheckResult(False, "L4TOUT", duration=1.0004), "Layer4 timeout, check duration: 1000ms"),
        (
            CheckResult(True, "L7OK", code=200, duration=0.002),
            "Layer7 check passed, code: 200, check duration: 2ms",
        ),
        (CheckResult(True, "L4OK", duration=0.0), "Layer4 check passed, check duration: 0ms"),
    ],
)
def test_check_result_wording(result: CheckResult, text: str) -> None:
    assert result.describe() == text
