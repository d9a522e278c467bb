"""The rise/fall state machine of one server: the single health truth (sans-IO).

Rules (after HAProxy's check.c and Pingora's health_check.rs):
- One machine per server, fed by active checks (`record`) and passive observation (`failure`,
  `sudden_death`, `mark_down`) alike: two sources, one state, so they can never disagree.
- Four operational states. UP and DOWN are stable; GOING_DOWN is still up (HAProxy shows
  "UP 2/3": two more failures and it is down) and GOING_UP is still down ("DOWN 1/2": one
  success of the two needed). `count` is the consecutive failures (GOING_DOWN) or successes
  (GOING_UP) so far; it is 0 in UP and DOWN.
- The machine alone writes `target.up` (ServerState.up), and only in `_move`, which checks the
  transition against `_ALLOWED` and the count against rise/fall *before* changing anything: an
  illegal transition raises IllegalTransition and leaves every field as it was.
- `on_change(health, reason)` is called once per UP<->DOWN change, after `target.up` changed
  (never for a step inside GOING_*): the owner logs it and tells the balancer.
- "Healthy" (this machine) is independent of "enabled" (the operator's admin state READY/DRAIN/
  MAINT lives in ServerState.admin and is never read here). `checked` is whether the server has
  a check at all; `enabled` is the operator's `enable|disable health`. A server that is not
  checked, or whose health is disabled, is UP (HAProxy: "considered UP").
- No I/O, no event loop, no logging: time comes from the injected `clock` (downtime accounting)
  and the only outward effects are `target.up`, the counters below and the two callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol


class Op(StrEnum):
    """Operational state (the health checks' view; the admin state is elsewhere)."""

    UP = "UP"
    GOING_DOWN = "GOING_DOWN"  # up, with `count` consecutive failures (1 <= count < fall)
    DOWN = "DOWN"
    GOING_UP = "GOING_UP"  # down, with `count` consecutive successes (1 <= count < rise)


# Legal moves. A stable state never jumps to the "going" state of its own side (UP → GOING_UP
# or DOWN → GOING_DOWN would mean a success counted as a failure). Staying put is legal.
_ALLOWED: dict[Op, frozenset[Op]] = {
    Op.UP: frozenset({Op.UP, Op.GOING_DOWN, Op.DOWN}),
    Op.GOING_DOWN: frozenset({Op.GOING_DOWN, Op.UP, Op.DOWN}),
    Op.DOWN: frozenset({Op.DOWN, Op.GOING_UP, Op.UP}),
    Op.GOING_UP: frozenset({Op.GOING_UP, Op.UP, Op.DOWN}),
}

# HAProxy's check status codes and their descriptions (src/check.c, check_statuses[]), as the
# stats page and the transition log lines show them.
STATUS_DESCRIPTIONS: dict[str, str] = {
    "L4OK": "Layer4 check passed",
    "L4TOUT": "Layer4 timeout",
    "L4CON": "Layer4 connection problem",
    "L7OK": "Layer7 check passed",
    "L7TOUT": "Layer7 timeout",
    "L7RSP": "Layer7 invalid response",
    "L7STS": "Layer7 wrong status",
    "HANA": "Health analyze",  # passive observation (`observe`)
}


class IllegalTransition(Exception):
    """A move the state machine refuses; nothing was changed."""


class Target(Protocol):
    """What the machine drives: ServerState, or any object with an `up` flag (tests)."""

    up: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check (active) or one triggered observation (passive, HANA)."""

    ok: bool
    status: str  # a key of STATUS_DESCRIPTIONS
    code: int | None = None  # HTTP status, for L7 results
    info: str | None = None  # e.g. "Connection refused"
    duration: float | None = None  # seconds; None when no check ran (passive)

    def describe(self) -> str:
        """`Layer7 wrong status, code: 500, check duration: 3ms`: HAProxy's order is reason,
        code, info, duration (srv_append_status)."""
        parts = [STATUS_DESCRIPTIONS.get(self.status, self.status)]
        if self.code is not None:
            parts.append(f"code: {self.code}")
        if self.info:
            parts.append(f'info: "{self.info}"')
        if self.duration is not None:
            parts.append(f"check duration: {round(self.duration * 1000)}ms")
        return ", ".join(parts)


ChangeCallback = Callable[["HealthState", str], None]


class HealthState:
    """Rise/fall state of one server. See the module banner for the rules."""

    __slots__ = (
        "_down_since",
        "_downtime",
        "check_failures",
        "checked",
        "checks",
        "clock",
        "count",
        "downs",
        "enabled",
        "fall",
        "last_change",
        "last_result",
        "on_change",
        "op",
        "rise",
        "target",
        "wake",
    )

    def __init__(
        self,
        target: Target,
        *,
        rise: int = 2,
        fall: int = 3,
        init_state: Literal["up", "down"] = "up",
        checked: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_change: ChangeCallback | None = None,
    ) -> None:
        # --- configuration (rise/fall change only through `reconfigure`)
        self.target = target
        self.rise = rise
        self.fall = fall
        self.clock = clock
        self.on_change = on_change
        # Set by the active checker while it runs: asks for the next check sooner (fastinter).
        self.wake: Callable[[], None] | None = None
        # --- the state
        self.checked = False
        self.enabled = True  # the operator's `enable|disable health`
        self.op = Op.UP
        self.count = 0
        # --- counters, as HAProxy's stats columns
        self.checks = 0  # active checks run
        self.check_failures = 0  # chkfail: failed checks while not DOWN
        self.downs = 0  # chkdown: UP -> DOWN transitions
        self.last_result: CheckResult | None = None  # check_status / check_code / check_duration
        self._downtime = 0.0  # seconds spent down, closed periods only
        self._down_since: float | None = None  # when the current down period started
        self.last_change = clock()  # lastchg: when `up` last changed
        target.up = True
        if checked:
            self.start_checking(init_state)

    # --- reading ---------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """The one truth, as ServerState.up holds it."""
        return self.target.up

    def display(self) -> str:
        """HAProxy's stats wording: `UP`, `UP 2/3` (2 failures left), `DOWN`, `DOWN 1/2` (1 of 2
        successes), `no check`, or `UP (health disabled)`."""
        if not self.checked:
            return "no check"
        if not self.enabled:
            return "UP (health disabled)"
        if self.op is Op.GOING_DOWN:
            return f"UP {self.fall - self.count}/{self.fall}"
        if self.op is Op.GOING_UP:
            return f"DOWN {self.count}/{self.rise}"
        return self.op.value

    def downtime(self, now: float | None = None) -> float:
        """Total seconds spent down, including the current down period."""
        if self._down_since is None:
            return self._downtime
        return self._downtime + ((self.clock() if now is None else now) - self._down_since)

    # --- transitions fed by checks ----------------------------------------------------------

    def record(self, result: CheckResult) -> None:
        """The outcome of one active check."""
        self.checks += 1
        self.last_result = result
        if result.ok:
            self.success(result.describe())
        else:
            self.failure(result.describe())

    def success(self, reason: str = "") -> None:
        """One passed check: GOING_DOWN → UP; DOWN → GOING_UP → … → UP after `rise`."""
        if not self._active():
            return
        op = self.op
        if op is Op.DOWN or op is Op.GOING_UP:
            n = self.count + 1
            if n >= self.rise:
                self._move(Op.UP, 0, reason)
            else:
                self._move(Op.GOING_UP, n, reason)
        elif op is Op.GOING_DOWN:
            self._move(Op.UP, 0, reason)

    def failure(self, reason: str) -> None:
        """One failed check: UP → GOING_DOWN → … → DOWN after `fall`; GOING_UP → DOWN."""
        if not self._active():
            return
        op = self.op
        if op is Op.DOWN:
            return
        self.check_failures += 1
        if op is Op.GOING_UP:
            self._move(Op.DOWN, 0, reason)
        else:
            self._fail_to(self.count + 1, reason)

    def sudden_death(self, reason: str) -> None:
        """HAProxy's `on-error sudden-death`: a failure that leaves an up server one failure
        away from DOWN (`UP 1/fall`); one that already was goes DOWN. A down server fails as
        usual."""
        if not self._active():
            return
        if self.op is Op.UP or self.op is Op.GOING_DOWN:
            self.check_failures += 1
            # HAProxy primes health to rise+1 (two failures left) before the failure.
            self._fail_to(max(self.count, self.fall - 2) + 1, reason)
        else:
            self.failure(reason)

    def mark_down(self, reason: str) -> None:
        """HAProxy's `on-error mark-down`: DOWN now, whatever the counts."""
        if not self._active():
            return
        if self.op is not Op.DOWN:
            self.check_failures += 1
            self._move(Op.DOWN, 0, reason)

    def request_check(self) -> None:
        """Ask the active checker for an early check (`fastinter`); no-op when none runs."""
        wake = self.wake
        if wake is not None:
            wake()

    def force(self, op: Op, count: int = 0, reason: str = "forced") -> None:
        """Set the state directly, validated like any transition (tests, state restore)."""
        if not self.checked or not self.enabled:
            raise IllegalTransition("health is not checked or disabled: no state to force")
        self._move(op, count, reason)

    # --- configuration and operator ---------------------------------------------------------

    def start_checking(self, init_state: Literal["up", "down"]) -> None:
        """Checks begin on this server (first configuration, or a check added by a reload).

        HAProxy's `init-state`: `up` is up until the first failed check (`UP 1/fall`), `down`
        is down until the first passed one (`DOWN rise-1/rise`). With fall or rise of 1 the
        unconfirmed state is the stable one."""
        self.checked = True
        self.enabled = True
        if init_state == "up":
            self._set_unconfirmed_up()
        elif self.rise > 1:
            self._set(Op.GOING_UP, self.rise - 1)
        else:
            self._set(Op.DOWN, 0)
        self._apply_up(self.op is Op.UP or self.op is Op.GOING_DOWN, "initial state", False)

    def stop_checking(self, reason: str = "health check removed") -> None:
        """No check any more: the server is UP (reported through on_change if it was down)."""
        self.checked = False
        self.enabled = True
        self._set(Op.UP, 0)
        self._apply_up(True, reason, True)

    def disable(self) -> None:
        """`disable health`: checks and observations are ignored; the server counts as UP."""
        if not self.checked:
            raise IllegalTransition("server has no health check")
        self.enabled = False
        self._set(Op.UP, 0)
        self._apply_up(True, "health check disabled by the operator", True)

    def enable(self) -> None:
        """`enable health`: checks count again, starting from `UP 1/fall` as at start (it was
        considered UP while disabled): the first failure takes it down, a success confirms."""
        if not self.checked:
            raise IllegalTransition("server has no health check")
        if self.enabled:
            return
        self.enabled = True
        self._set_unconfirmed_up()

    def reconfigure(self, rise: int, fall: int) -> None:
        """New rise/fall from a reload: the up/down side is kept, the progress clamped so the
        state stays legal (a GOING_* state whose count reached the new threshold settles)."""
        if rise < 1 or fall < 1:
            raise IllegalTransition(f"rise and fall must be >= 1, got {rise}/{fall}")
        self.rise = rise
        self.fall = fall
        if self.op is Op.GOING_DOWN and self.count >= fall:
            self._set_unconfirmed_up()
        elif self.op is Op.GOING_UP and self.count >= rise:
            if rise > 1:
                self._set(Op.GOING_UP, rise - 1)
            else:
                self._set(Op.DOWN, 0)

    # --- the only places that change state --------------------------------------------------

    def _active(self) -> bool:
        return self.checked and self.enabled

    def _fail_to(self, failures: int, reason: str) -> None:
        if failures >= self.fall:
            self._move(Op.DOWN, 0, reason)
        else:
            self._move(Op.GOING_DOWN, failures, reason)

    def _move(self, op: Op, count: int, reason: str) -> None:
        """Validate, then change: nothing is touched when the move is illegal."""
        if op not in _ALLOWED[self.op]:
            raise IllegalTransition(f"{self.op.value} -> {op.value} is not a legal transition")
        self._check_count(op, count)
        self.op = op
        self.count = count
        self._apply_up(op is Op.UP or op is Op.GOING_DOWN, reason, True)

    def _check_count(self, op: Op, count: int) -> None:
        if op is Op.GOING_DOWN and not 1 <= count < self.fall:
            raise IllegalTransition(f"GOING_DOWN needs 1 <= count < fall={self.fall}, got {count}")
        if op is Op.GOING_UP and not 1 <= count < self.rise:
            raise IllegalTransition(f"GOING_UP needs 1 <= count < rise={self.rise}, got {count}")
        if (op is Op.UP or op is Op.DOWN) and count != 0:
            raise IllegalTransition(f"{op.value} needs count 0, got {count}")

    def _set(self, op: Op, count: int) -> None:
        """Internal placement (configuration, operator), validated for the count only."""
        self._check_count(op, count)
        self.op = op
        self.count = count

    def _set_unconfirmed_up(self) -> None:
        """Up until the next failure: `UP 1/fall`, or plain UP when fall is 1."""
        if self.fall > 1:
            self._set(Op.GOING_DOWN, self.fall - 1)
        else:
            self._set(Op.UP, 0)

    def _apply_up(self, up: bool, reason: str, notify: bool) -> None:
        """Write the one truth, account downtime and report a real UP<->DOWN change."""
        target = self.target
        if target.up == up:
            return
        now = self.clock()
        target.up = up
        self.last_change = now
        if up:
            if self._down_since is not None:
                self._downtime += now - self._down_since
                self._down_since = None
        else:
            self._down_since = now
            if notify:
                self.downs += 1
        if notify and self.on_change is not None:
            self.on_change(self, reason)
