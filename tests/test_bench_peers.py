"""The bench's reference proxies (bench/peers/floor_proxy.py, relay_proxy.py) and its CPU split.

Rules: each peer runs as the bench runs it (a subprocess on 127.0.0.1) in front of a real HTTP
server that counts its TCP connections; a real client sends keep-alive requests over one
connection. The peers are bench rows, so what they must do is what the rows claim: relay bytes
unchanged over one server connection per client (relay), forward heads with X-Forwarded-For
(floor). cpu_times is checked against a process that burns CPU in user space.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_helpers import free_port

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from procs import cpu_seconds, cpu_times  # noqa: E402  (bench/ is not a package)

pytestmark = pytest.mark.timeout(60)


class CountingServer:
    """HTTP/1.1 keep-alive server: answers each request head with its own request line and
    X-Forwarded-For as the body, and counts the requests of each connection."""

    def __init__(self) -> None:
        self.requests_per_connection: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests_per_connection)
        self.requests_per_connection.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                xff = [
                    v for n, _, v in (ln.partition(": ") for ln in lines) if n == "X-Forwarded-For"
                ]
                body = f"{lines[0]}|{','.join(xff)}".encode()
                self.requests_per_connection[index] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[tuple[CountingServer, int]]:
    counting = CountingServer()
    server = await asyncio.start_server(counting.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield counting, port
    server.close()


@pytest.fixture
def peer_factory() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def _start_peer(script: str, upstream: int, procs: list[subprocess.Popen[bytes]]) -> int:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "peers" / script), "--port", str(port),
         "--upstream", f"127.0.0.1:{upstream}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    procs.append(proc)
    for _ in range(200):  # up to 10 s for the interpreter to start and listen
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return port
    raise AssertionError(f"{script} did not listen on {port}")


async def _two_requests(port: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies = []
    for path in (b"/one", b"/two?x=1"):
        writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\nUser-Agent: test\r\n\r\n" % path)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        bodies.append(await asyncio.wait_for(reader.readexactly(length), 5))
    writer.close()
    return bodies


@pytest.mark.parametrize(
    ("script", "xff"),
    [
        ("relay_proxy.py", b""),  # bytes unchanged: nothing added
        ("floor_proxy.py", b"127.0.0.1"),  # heads rebuilt with X-Forwarded-For
    ],
)
async def test_peer_forwards_over_one_server_connection(
    script: str,
    xff: bytes,
    backend: tuple[CountingServer, int],
    peer_factory: list[subprocess.Popen[bytes]],
) -> None:
    counting, upstream = backend
    port = await _start_peer(script, upstream, peer_factory)
    bodies = await _two_requests(port)
    assert bodies == [b"GET /one HTTP/1.1|" + xff, b"GET /two?x=1 HTTP/1.1|" + xff]
    # Both requests over one server connection (the readiness probe may have made an empty one).
    assert 2 in counting.requests_per_connection


BURNER = """
import sys, time
while time.process_time() < 0.6:  # CPU time, not wall time: a loaded machine still gets there
    for _ in range(100_000):  # the checks above are syscalls; this loop is the user-space work
        pass
print("done", flush=True)
sys.stdin.read()
"""


def test_cpu_times_splits_user_and_system() -> None:
    burner = subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert burner.stdout is not None
        assert burner.stdout.readline() == b"done\n"  # the burner is now idle: times are stable
        user, system = cpu_times(burner.pid)
        assert user >= 0.4
        assert system < user
        assert cpu_seconds(burner.pid) == pytest.approx(user + system, abs=0.02)
        assert cpu_times(os.getpid())[0] > 0
    finally:
        burner.communicate(b"", timeout=10)
