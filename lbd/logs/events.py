"""The event log: what happens to lbd itself, apart from the requests it serves.

Rules: events go through Python logging under `lbd.events` (stderr with `lbd run`, hence the
journal under systemd), one line each, with a level an operator can filter on: INFO for what
the operator did or expects (reload applied, log reopened), WARNING for what degrades service
(a server going DOWN, lines lost), ERROR for what needs a human (a rejected configuration, a
backend without any server). Messages follow HAProxy's wording where one exists, so existing
alert rules keep matching. Anything that can repeat per request goes through a Throttle: at most
one line per minute, with the count of what was left out.

Who reports what, today:
- server state changes (health checks, observe): lbd/health/manager.py, on `lbd.events`, in
  HAProxy's words (`Server app/app1 is DOWN, reason: …. 1 active and 0 backup servers left.`);
- the access log's own trouble (queue overflow, a target that cannot be opened or written, a
  reopen on SIGUSR1): here;
- reloads and start/stop: lbd/process/worker.py on `lbd`; "backend X has no server available!"
  on `lbd.runtime` (candidates to move to `lbd.events`).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("lbd.events")

THROTTLE_SECONDS = 60.0


class Throttle:
    """Lets one message through per interval and counts the ones it held back.

    Not thread-safe: each thread that reports keeps its own instance."""

    __slots__ = ("_interval", "_next", "suppressed")

    def __init__(self, interval: float = THROTTLE_SECONDS) -> None:
        self._interval = interval
        self._next = 0.0
        self.suppressed = 0

    def ready(self) -> bool:
        """True at most once per interval; the caller then reports `take_suppressed()`."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


def _also(suppressed: int) -> str:
    return f" ({suppressed} similar messages suppressed)" if suppressed else ""


def overflow(what: str, lost: int, capacity: int, throttle: Throttle) -> None:
    """A bounded queue was full and `lost` items were dropped (rate limited by `throttle`)."""
    if throttle.ready():
        log.warning(
            "%s full (%d entries): %d dropped so far%s",
            what,
            capacity,
            lost,
            _also(throttle.take_suppressed()),
        )


def log_target_failed(
    target: str, action: str, exc: BaseException, lost: int, throttle: Throttle
) -> None:
    """The access log cannot open or write its target (rate limited by `throttle`)."""
    if throttle.ready():
        log.warning(
            "access log %s: cannot %s: %s; %d lines lost so far%s",
            target,
            action,
            exc,
            lost,
            _also(throttle.take_suppressed()),
        )


def log_target_recovered(target: str, lost: int, throttle: Throttle) -> None:
    if throttle.ready():
        log.info("access log %s: writing again (%d lines lost meanwhile)", target, lost)


def log_reopened(target: str) -> None:
    log.info("access log %s reopened", target)
