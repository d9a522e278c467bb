"""Helpers shared by the TLS, access-control, limits and safe-defaults tests (no tests here).

Rules: certificates are made by the `openssl` CLI into the test's tmp_path; lbd runs as a real
process (e2e_helpers.LbdProcess) with a config written by the test; clients are real sockets
on 127.0.0.0/8. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

from e2e_helpers import (
    HOST,
    IO_TIMEOUT,
    TEST_TIMEOUTS,
    Harness,
    LbdProcess,
    free_port,
    wait_until,
)


def make_cert(
    tmp: Path, name: str, sans: tuple[str, ...] = (), cn: str | None = None
) -> tuple[Path, Path]:
    """A self-signed EC certificate (it is its own CA) for `sans` (DNS:… / IP:…)."""
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    args = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={cn or name}",
    ]  # fmt: skip
    if sans:
        args += ["-addext", "subjectAltName=" + ",".join(sans)]
    subprocess.run(args, check=True, capture_output=True, timeout=30)
    return cert, key


def config(
    port: int,
    servers: list[int],
    frontend: dict[str, Any] | None = None,
    glob: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    server_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One frontend `fe` on 127.0.0.1:port with extra keys, one backend `app`."""
    servers_cfg = [
        {"name": f"s{i + 1}", "address": f"{HOST}:{p}", **(server_extra or {})}
        for i, p in enumerate(servers)
    ]
    return {
        "global": {"log": {"access": "off"}, **(glob or {})},
        "defaults": {"timeouts": dict(TEST_TIMEOUTS)},
        "frontends": {
            "fe": {"bind": [f"{HOST}:{port}"], "default_backend": "app", **(frontend or {})}
        },
        "backends": {"app": {"servers": servers_cfg, **(backend or {})}},
    }


async def start_lbd(h: Harness, cfg: dict[str, Any], port: int) -> LbdProcess:
    """Start lbd and wait until it is fully started: it catches SIGTERM (installed first, so
    a stop while starting is graceful) and every TCP listener of `cfg` accepts (the stats
    listener opens after the frontends)."""
    proc = LbdProcess(cfg, h.workdir, port)
    h.procs.append((proc, False))
    await proc.start()
    await wait_until(lambda: catches_sigterm(proc.pid), what="lbd to install its handlers")
    for listener in _tcp_ports(cfg):
        await wait_until(lambda p=listener: _accepts(p), what=f"lbd to listen on {listener}")
    return proc


def _tcp_ports(cfg: dict[str, Any]) -> list[int]:
    binds = [b for fe in cfg.get("frontends", {}).values() for b in fe.get("bind", [])]
    stats = cfg.get("global", {}).get("stats")
    if stats:
        binds.append(stats["bind"])
    return [int(str(b).rsplit(":", 1)[1]) for b in binds]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    """A client context trusting `cafile` (names not checked: tests pick names freely)."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.check_hostname = False
    if cafile is None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def tls_get(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str | None = None,
    target: str = "/",
    source: str | None = None,
) -> tuple[bytes, ssl.SSLObject | None]:
    """One `Connection: close` GET over TLS; (every byte of the response, the SSL object)."""
    sock = bound_socket(source) if source else None
    if sock is not None:
        sock.connect((HOST, port))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            None if sock else HOST,
            None if sock else port,
            sock=sock,
            ssl=ctx,
            server_hostname=server_hostname or "",
        ),
        IO_TIMEOUT,
    )
    sslobj = writer.get_extra_info("ssl_object")
    writer.write(f"GET {target} HTTP/1.1\r\nHost: ehr.test\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)
    writer.close()
    return data, sslobj


def bound_socket(source: str) -> socket.socket:
    """A blocking TCP socket bound to `source` (another loopback address, to act as another
    client): the kernel routes all of 127.0.0.0/8 to lo."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(IO_TIMEOUT)
    return sock


async def raw_request(
    port: int, data: bytes, source: str = HOST, timeout: float = IO_TIMEOUT
) -> bytes:
    """Send `data` from `source` and read until the server closes (b"" when it closed first)."""
    sock = bound_socket(source)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(-1), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


class Silent:
    """A TCP connection from `source` that sends nothing (not even a ClientHello)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str = HOST) -> Silent:
        sock = bound_socket(source)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), 5)
        return cls(*await asyncio.open_connection(sock=sock))

    async def closed_by_server(self, timeout: float) -> bytes | None:
        """What the server sent before closing (b"" for nothing), None if still open after
        `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.reader.read(-1), timeout)
        except ConnectionResetError:
            return b""
        except TimeoutError:
            return None

    def close(self) -> None:
        self.writer.close()


async def admin(path: Path, command: str) -> str:
    """One admin-socket command; the answer without its closing empty line."""
    await wait_until(path.exists, what=f"{path} to exist")  # opened after the listeners
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), IO_TIMEOUT)
    writer.write(command.encode() + b"\n")
    lines: list[str] = []
    for _ in range(10_000):
        line = await asyncio.wait_for(reader.readline(), 30.0)
        if not line or line == b"\n":
            break
        lines.append(line.decode().rstrip("\n"))
    writer.close()
    return "\n".join(lines)


async def metric(stats_port: int, name: str, labels: str) -> float:
    """The value of one sample of lbd's /metrics, e.g. metric(p, "lbd_x_total", 'frontend="fe"')."""
    reader, writer = await asyncio.open_connection(HOST, stats_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)).decode()
    writer.close()
    for line in body.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{labels}}} in /metrics")


def stats_glob(stats_port: int) -> dict[str, Any]:
    return {"stats": {"bind": f"{HOST}:{stats_port}"}}


__all__ = ["free_port"]
