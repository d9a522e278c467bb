"""Access log: one line per request, formatted on the loop, written by a thread.

Rules:
- The event loop never blocks on a log target and never sees its errors. A line is formatted
  on the loop (formats.py: cheap, never raises into the proxy) and appended to a bounded
  deque; a writer thread drains it in batches, every FLUSH_SECONDS or as soon as a batch is
  full, and writes them to the target (targets.py). A full queue drops the line
  (`queue_full`); a failing target loses its batch (`write_failed`) and is reopened at most
  once a second. `dropped` is their sum, `written` what got through.
- Each counter is written by one thread only: the loop owns `queue_full` and `format_errors`,
  the writer thread the others, so `x += 1` needs no lock.
- Trouble is reported through the event log (events.py) at most once a minute per kind, never
  per line. A full disk, a closed pipe or an unreachable syslog never stops lbd.
- SIGUSR1 (logrotate's postrotate) → reopen(): the writer thread closes the file and opens the
  path again, so lines land in the new file from then on.
- Open access logs register themselves in a process-wide set that the Prometheus collector
  reads (`lbd_access_log_*`); close() removes them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING

from lbd.logs import events
from lbd.logs.formats import make_formatter
from lbd.logs.targets import Target, TargetError, make_target

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange

log = logging.getLogger("lbd.events")

# Lines waiting for the writer. ~200 bytes each, so ~1.6 MiB at most; at 20k req/s that is
# 0.4 s of a stalled target before lines drop. A larger queue only delays the drops (HAProxy
# buffers nothing beyond the pipe: a line that would block is dropped at once).
QUEUE_LINES = 8192
BATCH_LINES = 512  # lines per write(): one syscall per batch
# The writer wakes this often, or as soon as `_wake_at` lines wait. Waking it per line costs a
# lock and a GIL hand-over per request (measured on 2 cores: lbd lost ~40% of its throughput
# with the log on, ~25% with this; most of the rest is formatting, ~8 µs a line there).
FLUSH_SECONDS = 0.1
RETRY_SECONDS = 1.0  # a failed target is opened again at most this often
CLOSE_SECONDS = 2.0  # at stop: how long the writer may take to flush (a stalled target: gone)

_open_logs: weakref.WeakSet[AccessLog] = weakref.WeakSet()


def open_access_logs() -> list[AccessLog]:
    """Access logs open in this process (one per worker), for the metrics exporter."""
    return list(_open_logs)


class AccessLog:
    def __init__(self, target: str, fmt: str, *, capacity: int = QUEUE_LINES) -> None:
        # --- fixed
        self.target = target
        self.fmt = fmt
        self.capacity = capacity
        # The writer is woken early when this many lines wait (a small queue must not fill up
        # between two periodic flushes).
        self._wake_at = max(1, min(BATCH_LINES, capacity // 4))
        self._format = make_formatter(fmt)
        self._target: Target = make_target(target)
        # --- shared between the loop (appends) and the writer (pops): deque ops are atomic
        self._lines: deque[str] = deque()
        self._wake = threading.Event()  # set when _wake_at lines wait, or to reopen or stop
        self._reopen = False
        self._stopping = False
        # --- counters owned by the loop
        self.queue_full = 0
        self.format_errors = 0
        self._full_throttle = events.Throttle()
        self._format_throttle = events.Throttle()
        # --- counters and state owned by the writer thread
        self.written = 0
        self.write_failed = 0
        self.errors = 0  # failed open or write attempts
        self._broken = False  # the target failed: reopen before the next write
        self._retry_at = 0.0
        self._lost_since_ok = 0
        self._fail_throttle = events.Throttle()
        self._recover_throttle = events.Throttle()
        self._thread = threading.Thread(target=self._run, name="lbd-access-log", daemon=True)
        self._thread.start()
        _open_logs.add(self)

    @property
    def dropped(self) -> int:
        """Lines that will never reach the target: queue full, or lost with a failed write."""
        return self.queue_full + self.write_failed

    @property
    def queued(self) -> int:
        return len(self._lines)

    # --- the event loop's side ------------------------------------------------------------------

    def __call__(self, ex: Exchange, elapsed: float) -> None:
        """Log one finished exchange. Never blocks, never raises."""
        lines = self._lines
        if len(lines) >= self.capacity:
            self.queue_full += 1
            events.overflow("access log queue", self.queue_full, self.capacity, self._full_throttle)
            return
        try:
            line = self._format(ex, elapsed, time.time())
        except Exception:
            # A formatting bug must never break the proxy's accounting, which calls us.
            self.format_errors += 1
            if self._format_throttle.ready():
                log.exception("access log: cannot format a line (%d so far)", self.format_errors)
            return
        lines.append(line)
        if len(lines) == self._wake_at:
            self._wake.set()

    def reopen(self) -> None:
        """Ask the writer to close and reopen the target (SIGUSR1). Returns at once."""
        self._reopen = True
        self._wake.set()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Flush what is queued (for up to `timeout`) and close the target."""
        _open_logs.discard(self)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    # --- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        lines = self._lines
        self._open()
        while True:
            if self._reopen:
                self._reopen = False
                self._target.close()
                if self._open():
                    events.log_reopened(self._target.label)
            if self._stopping and not lines:
                break
            if len(lines) < self._wake_at and not self._stopping and not self._reopen:
                # A wake-up missed between wait() and clear() costs at most FLUSH_SECONDS of
                # delay: everything queued is written below either way.
                self._wake.wait(FLUSH_SECONDS)
                self._wake.clear()
            while lines and not self._reopen:
                n = min(len(lines), BATCH_LINES)
                self._deliver([lines.popleft() for _ in range(n)])
        self._target.close()

    def _open(self) -> bool:
        try:
            self._target.open()
        except OSError as exc:
            self.errors += 1
            self._broken = True
            self._retry_at = time.monotonic() + RETRY_SECONDS
            events.log_target_failed(
                self._target.label, "open", exc, self.dropped, self._fail_throttle
            )
            return False
        self._broken = False
        return True

    def _deliver(self, batch: list[str]) -> None:
        if self._broken and (time.monotonic() < self._retry_at or not self._open()):
            self._lost(len(batch))
            return
        try:
            self._target.write(batch)
        except TargetError as exc:
            self.written += exc.delivered
            self._lost(len(batch) - exc.delivered)
            self.errors += 1
            self._target.close()
            self._broken = True
            self._retry_at = time.monotonic() + RETRY_SECONDS
            events.log_target_failed(
                self._target.label, "write", exc.cause, self.dropped, self._fail_throttle
            )
            return
        self.written += len(batch)
        if self._lost_since_ok:
            events.log_target_recovered(
                self._target.label, self._lost_since_ok, self._recover_throttle
            )
            self._lost_since_ok = 0

    def _lost(self, n: int) -> None:
        self.write_failed += n
        self._lost_since_ok += n
