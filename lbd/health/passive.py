"""Passive health checks: HAProxy's `observe`, `error-limit` and `on-error`, on live traffic.

Rules:
- The proxy reports what happened to a request with the module functions below; they are
  called once per event on the hot path and cost one attribute read and a None test when the
  backend does not observe, a comparison or two when it does and nothing goes wrong.
- Errors are counted per server and must be *consecutive*: any non-error outcome resets the
  count. Which outcomes count follows HAProxy's analyze_statuses[] table:
    layer4: connect failures (refused, unreachable, connect timeout) are errors; any response
            from the server resets (it connected).
    layer7: the above, plus response timeouts, invalid or empty responses, and statuses
            500-599 except 501 and 505 (the server said what it does not implement, it is not
            sick); any other response resets.
- When the count reaches `error_limit`, the action feeds the server's one rise/fall machine
  (lbd/health/state.py), never a state of its own, then the count restarts from zero:
    fastinter     the next active check runs within `fastinterval`;
    fail-check    one failed check (and fastinter);
    sudden-death  a failure that leaves an up server one failure from DOWN (and fastinter);
    mark-down     DOWN now (and fastinter); active checks bring it back after `rise` passes.
- Observation is installed by the health manager only on servers that are actively checked:
  without a check nothing could ever bring a marked-down server back (HAProxy refuses
  `observe` without `check` for the same reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.config.schema import Observe
from lbd.health.state import CheckResult, HealthState

if TYPE_CHECKING:
    from lbd.state import ServerState


class Observer:
    """The consecutive-error counter of one server, and what to do when it reaches the limit."""

    __slots__ = ("config", "errors", "health", "layer7", "limit", "triggered")

    def __init__(self, config: Observe, health: HealthState) -> None:
        self.config = config
        self.health = health
        self.layer7 = config.mode == "layer7"
        self.limit = config.error_limit
        self.errors = 0  # consecutive errors so far
        self.triggered = 0  # times the limit was reached (for stats and tests)

    def error(self, what: str) -> None:
        """One more consecutive error; at the limit, act on the health state and restart."""
        n = self.errors + 1
        if n < self.limit:
            self.errors = n
            return
        self.errors = 0
        self.triggered += 1
        self.act(n, what)

    def act(self, n: int, what: str) -> None:
        """The limit was reached (`n` consecutive errors, the last one `what`)."""
        health = self.health
        action = self.config.on_error
        if action != "fastinter":
            result = CheckResult(
                ok=False,
                status="HANA",
                info=f"Detected {n} consecutive errors, last one was: {what}",
            )
            reason = result.describe()
            if health.checked and health.enabled:
                health.last_result = result
            if action == "fail-check":
                health.failure(reason)
            elif action == "sudden-death":
                health.sudden_death(reason)
            else:
                health.mark_down(reason)
        health.request_check()


# --- called by the proxy (lbd/proxy/exchange.py), once per event ---------------------------------


def connect_failed(server: ServerState, reason: str) -> None:
    """A connection to the server failed or timed out (both modes)."""
    obs = server.observer
    if obs is not None:
        obs.error(f"L4 unsuccessful connection ({reason})")


def response(server: ServerState, status: int) -> None:
    """The server sent a final response head with `status` (before any retry decision)."""
    obs = server.observer
    if obs is None:
        return
    if status >= 500 and obs.layer7 and status != 501 and status != 505:
        obs.error(f"Wrong http response ({status})")
    elif obs.errors:
        obs.errors = 0


def timeout(server: ServerState) -> None:
    """The server did not answer (or stopped sending) within `timeouts.server` (layer7)."""
    obs = server.observer
    if obs is not None and obs.layer7:
        obs.error("Read timeout (http)")


def broken(server: ServerState, reason: str) -> None:
    """The server sent an unparseable response, or closed the connection before or during
    its response (layer7). Not for the reused-connection race that is resent for free."""
    obs = server.observer
    if obs is not None and obs.layer7:
        obs.error(f"Invalid http response ({reason})")
