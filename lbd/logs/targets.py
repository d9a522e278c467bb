"""Where access-log lines go: stdout, a file, or syslog (RFC 5424 over UDP or a unix socket).

Rules: only the access log's writer thread calls these, never the event loop, so they may block
(a slow disk, a full pipe, a busy syslog socket); nothing here is shared between threads. A
target that fails raises TargetError saying how many lines of the batch got through; the writer
then closes it and opens it again later. `open()` may be called again after `close()` (logrotate:
SIGUSR1 closes the old file and opens the path anew).

Syslog: facility local0, severity info (PRI 134), APP-NAME `lbd`, PROCID the pid, MSGID
`access`, no structured data, the access line as MSG (RFC 5424 §6). One datagram per line; a
line longer than MAX_DATAGRAM is cut (RFC 5426 asks receivers for 2048 bytes at least; rsyslog
and syslog-ng take 8 KiB by default, HAProxy cuts at 1024 unless told).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Sequence
from typing import Protocol

from lbd.logs.formats import DateCache

FILE_MODE = 0o640  # access lines name patients' paths and client addresses: not world-readable
FACILITY_LOCAL0 = 16
SEVERITY_INFO = 6
MAX_DATAGRAM = 8192
SEND_TIMEOUT = 1.0  # a unix syslog socket whose reader stalled: give up on that line after this


class TargetError(Exception):
    """Writing a batch failed after `delivered` of its lines got through."""

    def __init__(self, delivered: int, cause: OSError) -> None:
        super().__init__(str(cause))
        self.delivered = delivered
        self.cause = cause


class Target(Protocol):
    label: str  # for messages: `stdout`, the path, `syslog:udp://…`

    def open(self) -> None:
        """Make the target ready; raises OSError. Called again after close() to reopen."""

    def write(self, lines: Sequence[str]) -> None:
        """Deliver the lines (each without its newline); raises TargetError."""

    def close(self) -> None:
        """Release the file or socket; never raises."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FdTarget:
    """An already open descriptor (stdout): written, never opened or closed here."""

    def __init__(self, fd: int, label: str) -> None:
        self.label = label
        self._fd = fd

    def open(self) -> None:
        pass

    def write(self, lines: Sequence[str]) -> None:
        try:
            _write_all(self._fd, ("\n".join(lines) + "\n").encode("utf-8", "replace"))
        except OSError as exc:
            raise TargetError(0, exc) from exc

    def close(self) -> None:
        pass


class FileTarget:
    """A path opened for appending (created 0640 when missing). A FIFO is opened without
    waiting for a reader (ENXIO until one exists), then written with blocking writes."""

    def __init__(self, path: str) -> None:
        self.label = path
        self._path = path
        self._fd = -1

    def open(self) -> None:
        if self._fd >= 0:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(self._path, flags, FILE_MODE)
        try:
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def write(self, lines: Sequence[str]) -> None:
        if self._fd < 0:
            raise TargetError(0, OSError(errno.EBADF, "not open"))
        try:
            _write_all(self._fd, ("\n".join(lines) + "\n").encode("utf-8", "replace"))
        except OSError as exc:
            raise TargetError(0, exc) from exc

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class SyslogTarget:
    """RFC 5424 datagrams to a UDP address or a unix datagram socket (`/dev/log`). The socket
    is connected, so an unreachable UDP port (ICMP) and a missing unix socket show as errors."""

    def __init__(self, label: str, address: str | tuple[str, int]) -> None:
        self.label = label
        self._address = address  # a unix socket path, or (host, port) for UDP
        self._sock: socket.socket | None = None
        self._dates = DateCache()
        hostname = "".join(c for c in socket.gethostname() if "!" <= c <= "~")[:255]
        pri = FACILITY_LOCAL0 * 8 + SEVERITY_INFO
        # After the timestamp: HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA, then MSG.
        self._prefix = f"<{pri}>1 "
        self._suffix = f" {hostname or '-'} lbd {os.getpid()} access - "

    def open(self) -> None:
        if self._sock is not None:
            return
        address = self._address
        target: str | tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
        if isinstance(address, str):
            family, target = socket.AF_UNIX, address
        else:
            # A host name is resolved here, in the writer thread, and again on each reopen.
            info = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
            family, target = info[0], info[4]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def header(self, now: float) -> str:
        """`<134>1 2024-05-01T12:34:56.789+02:00 host lbd 4242 access - `"""
        return f"{self._prefix}{self._dates.iso(now)}{self._suffix}"

    def write(self, lines: Sequence[str]) -> None:
        sock = self._sock
        if sock is None:
            raise TargetError(0, OSError(errno.EBADF, "not open"))
        header = self.header(time.time()).encode("ascii")
        for i, line in enumerate(lines):
            datagram = header + line.encode("utf-8", "replace")
            try:
                sock.send(datagram[:MAX_DATAGRAM])
            except OSError as exc:
                raise TargetError(i, exc) from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def make_target(spec: str) -> Target:
    """`stdout` | `syslog:udp://HOST:PORT` | `syslog:unix:PATH` | a file path (the config
    loader validated the spelling)."""
    if spec == "stdout":
        return FdTarget(1, "stdout")
    if spec.startswith("syslog:udp://"):
        hostport = spec.removeprefix("syslog:udp://")
        host, _, port = hostport.rpartition(":")
        return SyslogTarget(spec, (host.strip("[]"), int(port)))
    if spec.startswith("syslog:unix:"):
        return SyslogTarget(spec, spec.removeprefix("syslog:unix:"))
    return FileTarget(spec)
