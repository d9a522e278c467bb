"""End-to-end test kit: a real lbd process, scripted raw backends, raw clients.

Rules (HAProxy reg-test style):
- Everything is real: lbd runs as `python -m lbd run -c FILE` on 127.0.0.1 and an ephemeral port;
  backends and clients are real sockets in the test's event loop. The proxy is never mocked.
- Every wait is bounded: each read has a timeout (IO_TIMEOUT unless told), every polling loop
  has a count and a deadline. No test asserts that something was fast, only that a timeout
  fired before a generous bound.
- A raw connection (`Wire`) keeps every byte it read in `received`, so a test can assert the
  exact bytes that reached a backend (or a client), not only what a parser made of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from lbd.mock.app import RunningMock, start_mock

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
IO_TIMEOUT = 5.0  # one read or connect; generous, nothing should take near this long
START_TIMEOUT = 10.0  # lbd listening after spawn
STOP_TIMEOUT = 10.0  # lbd gone after SIGTERM (test configs use timeouts.shutdown: 2s)

# Short, but never short enough to fire in a test that does not wait for them on purpose.
TEST_TIMEOUTS = {
    "connect": "1s",
    "client": "5s",
    "server": "5s",
    "http_request": "5s",
    "keep_alive": "5s",
    "queue": "1s",
    "shutdown": "2s",
}

# Lines in lbd's stderr that mean an exception escaped somewhere (a protocol callback, a task).
CRASH_MARKERS = ("Traceback (most recent call last)", "Exception in callback", "Task exception")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def wait_until(
    predicate: Callable[[], bool], timeout: float = IO_TIMEOUT, what: str = "condition"
) -> None:
    """Poll `predicate` every 10 ms until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(100_000):
        if predicate():
            return
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- HTTP/1.1 messages as raw bytes ------------------------------------------------------------


def request(
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (("Host", "ehr.test"),),
    body: bytes = b"",
    version: str = "1.1",
    content_length: bool | None = None,
) -> bytes:
    """Request bytes; a Content-Length is added when there is a body (or when asked)."""
    lines = [f"{method} {target} HTTP/{version}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if content_length or (content_length is None and body):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def response(
    status: int = 200,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    reason: str = "OK",
    content_length: bool = True,
    version: str = "1.1",
) -> bytes:
    lines = [f"HTTP/{version} {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(pieces: Iterable[bytes], trailers: bytes = b"") -> bytes:
    """A chunked body (RFC 9112 §7.1), one chunk per piece, with optional trailer lines."""
    out = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailers + b"\r\n"


@dataclass
class Message:
    """One parsed HTTP/1.x message. `body` is decoded (de-chunked); `raw` is as on the wire."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    chunked: bool = False

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def version(self) -> str:
        word = self.start_line.split(" ")[0 if self.start_line.startswith("HTTP/") else 2]
        return word.removeprefix("HTTP/")

    @property
    def method(self) -> str:
        return self.start_line.split(" ")[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ")[1]

    def values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        """The value of a header that must appear at most once."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} appears {len(found)} times in {self.headers}"
        return found[0] if found else None

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


class Wire:
    """One TCP connection; every byte read is appended to `received`, every message parsed to
    `messages`. All reads are bounded by a timeout and raise on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()
        self.messages: list[Message] = []

    @classmethod
    async def connect(cls, port: int, timeout: float = IO_TIMEOUT) -> Wire:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        return cls(reader, writer)

    # reading --------------------------------------------------------------------------------

    async def readuntil(self, sep: bytes = b"\r\n", timeout: float = IO_TIMEOUT) -> bytes:
        data = await asyncio.wait_for(self.reader.readuntil(sep), timeout)
        self.received += data
        return data

    async def readexactly(self, n: int, timeout: float = IO_TIMEOUT) -> bytes:
        data = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        self.received += data
        return data

    async def read(self, n: int = 65536, timeout: float = IO_TIMEOUT) -> bytes:
        """Up to n bytes; b"" at EOF. A reset by the peer counts as EOF."""
        try:
            data = await asyncio.wait_for(self.reader.read(n), timeout)
        except ConnectionResetError:
            return b""
        self.received += data
        return data

    async def read_until_eof(self, timeout: float = IO_TIMEOUT, limit: int = 1 << 26) -> bytes:
        """Everything until the peer closes (bounded in time and size)."""
        out = bytearray()
        async with asyncio.timeout(timeout):
            while len(out) <= limit:
                data = await self.read(65536, timeout)
                if not data:
                    return bytes(out)
                out += data
        raise AssertionError(f"more than {limit} bytes before EOF")

    async def at_eof(self, timeout: float = IO_TIMEOUT) -> bool:
        """True when the peer closed with no further byte; False if a byte arrived."""
        return await self.read(1, timeout) == b""

    async def read_message(
        self, *, method: str = "GET", timeout: float = IO_TIMEOUT
    ) -> Message | None:
        """The next request or response; None on a clean EOF before its first byte.

        `method` is the request's method when reading a response (HEAD has no body)."""
        start = len(self.received)
        async with asyncio.timeout(timeout):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                self.received += exc.partial
                if not exc.partial:
                    return None
                raise
            except ConnectionResetError:  # a reset is a close too (the caller checks content)
                return None
            self.received += head
            lines = head[:-4].decode("latin-1").split("\r\n")
            headers = [_split_header(line) for line in lines[1:]]
            msg = Message(lines[0], headers, b"", b"")
            is_response = lines[0].startswith("HTTP/")
            te = ",".join(msg.values("transfer-encoding")).lower()
            length = msg.values("content-length")
            if is_response and (
                method == "HEAD" or msg.status in (204, 304) or 100 <= msg.status < 200
            ):
                body = b""
            elif te.endswith("chunked"):
                msg.chunked = True
                body = await self._read_chunked()
            elif length:
                body = await self.readexactly(int(length[0]))
            elif is_response:
                body = await self.read_until_eof(timeout)
            else:
                body = b""
        msg.body = body
        msg.raw = bytes(self.received[start:])
        self.messages.append(msg)
        return msg

    async def read_response(self, *, method: str = "GET", timeout: float = IO_TIMEOUT) -> Message:
        msg = await self.read_message(method=method, timeout=timeout)
        assert msg is not None, f"connection closed before a response; got {bytes(self.received)!r}"
        return msg

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        for _ in range(1 << 20):
            size_line = await self.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                for _ in range(1000):  # trailer section, up to its empty line
                    if await self.readuntil(b"\r\n") == b"\r\n":
                        return bytes(body)
                raise AssertionError("endless trailer section")
            body += await self.readexactly(size)
            assert await self.readexactly(2) == b"\r\n", "chunk not followed by CRLF"
        raise AssertionError("endless chunked body")

    # writing --------------------------------------------------------------------------------

    async def send(self, data: bytes, timeout: float = IO_TIMEOUT) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        transport = self.writer.transport
        with contextlib.suppress(Exception):
            transport.abort()


def _split_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name, value.strip()


# --- raw backends ------------------------------------------------------------------------------

Handler = Callable[[Wire], Awaitable[None]]

# lbd closing or resetting a server connection mid-read is normal in many tests.
EXPECTED_HANDLER_ERRORS = (ConnectionError, asyncio.IncompleteReadError)


class RawBackend:
    """A TCP server on 127.0.0.1 whose every connection runs `handler(wire)`.

    `wires` holds one Wire per accepted connection, in accept order: `received` on each is
    exactly what lbd sent over that connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.wires: list[Wire] = []
        self.errors: list[Exception] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def unexpected_errors(self) -> list[Exception]:
        """Handler failures other than the peer (lbd) closing or resetting the connection."""
        return [e for e in self.errors if not isinstance(e, EXPECTED_HANDLER_ERRORS)]

    @property
    def accepted(self) -> int:
        return len(self.wires)

    @property
    def requests(self) -> list[Message]:
        """Every request parsed by the handlers, connection by connection."""
        return [m for w in self.wires for m in w.messages]

    def received(self) -> bytes:
        return b"".join(bytes(w.received) for w in self.wires)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        wire = Wire(reader, writer)
        self.wires.append(wire)
        try:
            await self.handler(wire)
        except Exception as exc:  # kept for the harness: a broken handler must fail the test
            self.errors.append(exc)
        finally:
            wire.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for wire in self.wires:
            wire.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=IO_TIMEOUT)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), IO_TIMEOUT)


Responder = Callable[[Message], bytes | None]


def serve(respond: Responder, idle_timeout: float = 60.0) -> Handler:
    """A keep-alive server: read a request, write `respond(request)`; None closes instead."""

    async def handler(wire: Wire) -> None:
        for _ in range(100_000):
            req = await wire.read_message(timeout=idle_timeout)
            if req is None:
                return
            answer = respond(req)
            if answer is None:
                return
            await wire.send(answer)

    return handler


def fixed(answer: bytes) -> Handler:
    """Answer every request with the same bytes, keeping the connection open."""
    return serve(lambda _req: answer)


def echo_target() -> Handler:
    """Answer each request with its target as the body (to check order)."""
    return serve(
        lambda req: response(200, req.target.encode(), [("X-Body-Len", str(len(req.body)))])
    )


# --- the lbd process ---------------------------------------------------------------------------


def lbd_config(
    port: int,
    servers: list[int],
    *,
    timeouts: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    access_log: str = "off",
) -> dict[str, Any]:
    """One frontend `fe` on 127.0.0.1:port, one backend `app` with servers s1, s2… on `servers`."""
    glob: dict[str, Any] = {"log": {"access": access_log}}
    if limits:
        glob["limits"] = limits
    app: dict[str, Any] = {
        "servers": [{"name": f"s{i + 1}", "address": f"{HOST}:{p}"} for i, p in enumerate(servers)],
        **(backend or {}),
    }
    return {
        "global": glob,
        "defaults": {"timeouts": {**TEST_TIMEOUTS, **(timeouts or {})}},
        "frontends": {"fe": {"bind": [f"{HOST}:{port}"], "default_backend": "app"}},
        "backends": {"app": app},
    }


@dataclass
class LbdProcess:
    """`python -m lbd run -c FILE` with its output in files (a full pipe can never block it)."""

    config: dict[str, Any]
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.path = self.workdir / f"lbd-{self.port}.yaml"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"lbd-{self.port}.stderr"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> LbdProcess:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        out = (self.workdir / f"lbd-{self.port}.stdout").open("wb")
        err = self.stderr_path.open("wb")
        with out, err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lbd", "run", "-c", str(self.path)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        for _ in range(1000):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"lbd exited with {self.proc.returncode} at start:\n{self.stderr()}"
                )
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 1.0)
                writer.close()
                return self
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"lbd did not listen on {self.port}:\n{self.stderr()}")

    async def stop(self) -> int:
        """SIGTERM, then wait (bounded) for the graceful stop; kill if it hangs."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        for _ in range(2000):
            if proc.poll() is not None or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            raise AssertionError(f"lbd ignored SIGTERM for {STOP_TIMEOUT}s:\n{self.stderr()}")
        return proc.returncode

    def rss_kib(self) -> int:
        """Resident set size of the lbd process, from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")


# --- the harness: everything one test starts, torn down in the right order ----------------------


class Harness:
    """Starts backends, lbd and clients for one test; `aclose` stops clients, then lbd
    (asserting it exits 0 and logged no traceback), then backends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.backends: list[RawBackend] = []
        self.mocks: list[RunningMock] = []
        self.procs: list[tuple[LbdProcess, bool]] = []
        self.wires: list[Wire] = []
        self.sessions: list[aiohttp.ClientSession] = []

    async def raw_backend(self, handler: Handler) -> RawBackend:
        backend = await RawBackend(handler).start()
        self.backends.append(backend)
        return backend

    async def mock_backend(self, name: str) -> RunningMock:
        mock = await start_mock(name, HOST, 0)
        self.mocks.append(mock)
        return mock

    async def lbd(
        self, servers: list[int], *, allow_tracebacks: bool = False, **options: Any
    ) -> LbdProcess:
        port = free_port()
        proc = LbdProcess(lbd_config(port, servers, **options), self.workdir, port)
        self.procs.append((proc, allow_tracebacks))
        return await proc.start()

    async def connect(self, port: int) -> Wire:
        wire = await Wire.connect(port)
        self.wires.append(wire)
        return wire

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=30, sock_read=IO_TIMEOUT))
        session = aiohttp.ClientSession(**kwargs)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        problems: list[str] = []
        try:
            for wire in self.wires:
                wire.close()
            for session in self.sessions:
                await session.close()
            for proc, allow_tracebacks in self.procs:
                if proc.proc is None:
                    continue
                code = await proc.stop()
                err = proc.stderr()
                if code != 0:
                    problems.append(f"lbd exited with {code} after SIGTERM:\n{err}")
                elif not allow_tracebacks and any(m in err for m in CRASH_MARKERS):
                    problems.append(f"lbd logged an exception:\n{err}")
        finally:
            for backend in self.backends:
                await backend.close()
                problems += [
                    f"raw backend handler failed: {e!r}" for e in backend.unexpected_errors()
                ]
            for mock in self.mocks:
                await mock.close()
        assert not problems, "\n".join(problems)
