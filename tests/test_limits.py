"""Abuse limits end to end: per-source request rate and connections (429 + Retry-After,
counted, logged), frontend maxconn under twice as many clients, and no file descriptor leak
after 10,000 connections (plain, TLS, and TLS aborted mid-handshake).

A real lbd process, real backends, real sockets; other clients are other loopback addresses.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from e2e_helpers import (
    HOST,
    IO_TIMEOUT,
    Harness,
    Wire,
    fixed,
    free_port,
    response,
    serve,
    wait_until,
)
from test_tls_kit import (
    Silent,
    bound_socket,
    client_context,
    config,
    make_cert,
    metric,
    raw_request,
    start_lbd,
    stats_glob,
)

GET = b"GET / HTTP/1.1\r\nHost: ehr.test\r\nConnection: close\r\n\r\n"


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:60]
    return int(data[9:12])


def _header(data: bytes, name: bytes) -> bytes | None:
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


async def test_rate_limit_hit_counted_logged_and_recovered(
    harness: Harness, tmp_path: Path
) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    log = tmp_path / "access.log"
    glob = {**stats_glob(stats), "log": {"access": str(log), "format": "httplog"}}
    fe = {"per_source": {"requests_per_second": 1, "burst": 3}}
    await start_lbd(harness, config(port, [backend.port], fe, glob), port)

    statuses = [_status(await raw_request(port, GET, "127.0.0.2")) for _ in range(3)]
    assert statuses == [200, 200, 200]  # the burst
    limited = await raw_request(port, GET, "127.0.0.2")
    assert _status(limited) == 429
    retry = _header(limited, b"Retry-After")
    assert retry is not None and 1 <= int(retry) <= 2
    # Another source has its own bucket.
    assert _status(await raw_request(port, GET, "127.0.0.3")) == 200
    assert (
        await metric(stats, "lbd_frontend_limited_requests_total", 'frontend="fe",reason="rate"')
        == 1
    )
    assert len(backend.requests) == 4  # the 429 never reached a server

    # Recovered after Retry-After seconds (bounded: at most a few tries)
    await asyncio.sleep(int(retry))
    for _ in range(5):
        got = _status(await raw_request(port, GET, "127.0.0.2"))
        if got == 200:
            break
        await asyncio.sleep(0.5)
    assert got == 200

    # The 429 is in the access log, with the proxy-blocked termination state
    def logged() -> bool:
        return log.exists() and " 429 " in log.read_text()

    await wait_until(logged, what="the 429 in the access log")
    line = next(ln for ln in log.read_text().splitlines() if " 429 " in ln)
    assert line.startswith("127.0.0.2:")
    assert " PR" in line


async def test_pipelined_requests_over_the_rate_get_429_in_turn(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port = free_port()
    fe = {"per_source": {"requests_per_second": 0.5, "burst": 2}}
    await start_lbd(harness, config(port, [backend.port], fe), port)
    keep = b"GET /%d HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
    data = await raw_request(port, b"".join(keep % i for i in range(4)), "127.0.0.4")
    # Two answered, then the 429 (and the connection closes: the 4th is never answered)
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert data.count(b"HTTP/1.1 429 ") == 1
    assert data.index(b"HTTP/1.1 429 ") > data.rindex(b"HTTP/1.1 200 ")
    assert b"Retry-After: 2\r\n" in data


async def test_per_source_connection_limit(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    fe = {"per_source": {"max_connections": 2}}
    await start_lbd(harness, config(port, [backend.port], fe, stats_glob(stats)), port)

    async def open_from(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = bound_socket(source)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        return await asyncio.open_connection(sock=sock)

    keep = b"GET / HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
    held = [await open_from("127.0.0.5") for _ in range(2)]
    for reader, writer in held:
        writer.write(keep)
        head = await asyncio.wait_for(reader.readuntil(b"ok"), IO_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 ")
    third = await raw_request(port, keep, "127.0.0.5")
    assert _status(third) == 429 and _header(third, b"Retry-After") == b"1"
    assert _status(await raw_request(port, GET, "127.0.0.6")) == 200  # other sources unaffected
    # The two held connections still work; closing one lets a new one in.
    reader, writer = held[0]
    writer.write(keep)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), IO_TIMEOUT)).startswith(b"HTTP/1.1 200")
    held[1][1].close()
    await asyncio.sleep(0.2)
    assert _status(await raw_request(port, GET, "127.0.0.5")) == 200
    writer.close()
    labels = 'frontend="fe",reason="connections"'
    assert await metric(stats, "lbd_frontend_limited_requests_total", labels) == 1


async def test_per_source_idle_connections_over_the_limit_are_closed(harness: Harness) -> None:
    """An over-limit connection that sends nothing is closed after a short grace, silently,
    long before timeouts.http_request: a source cannot hold more than its limit."""
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    cfg = config(port, [backend.port], {"per_source": {"max_connections": 2}}, stats_glob(stats))
    cfg["defaults"]["timeouts"]["http_request"] = "60s"
    lbd = await start_lbd(harness, cfg, port)
    baseline = _fd_count(lbd.pid)

    held = [await Silent.open(port, "127.0.0.5") for _ in range(2)]
    extra = [await Silent.open(port, "127.0.0.5") for _ in range(40)]
    outcomes = await asyncio.gather(*(c.closed_by_server(20) for c in extra))
    assert outcomes == [b""] * len(extra)  # all closed, not a byte sent, well before 60 s
    assert _fd_count(lbd.pid) <= baseline + len(held)
    current = await metric(stats, "lbd_frontend_current_connections", 'frontend="fe"')
    assert current == len(held)
    # The two within the limit are still open and served.
    for conn in held:
        conn.writer.write(b"GET / HTTP/1.1\r\nHost: ehr.test\r\n\r\n")
        data = await asyncio.wait_for(conn.reader.readuntil(b"ok"), IO_TIMEOUT)
        assert data.startswith(b"HTTP/1.1 200 ")
        conn.close()


async def test_frontend_maxconn_with_twice_as_many_clients(harness: Harness) -> None:
    active = 0
    peak = 0

    # The backend counts how many requests it has at once, holding each for 300 ms.
    async def handler(wire: Wire) -> None:
        nonlocal active, peak
        for _ in range(1000):
            req = await wire.read_message(timeout=10)
            if req is None:
                return
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.3)
            active -= 1
            await wire.send(response(200, b"ok"))

    backend = await harness.raw_backend(handler)
    port, stats = free_port(), free_port()
    maxconn = 5
    fe = {"maxconn": maxconn}
    cfg = config(port, [backend.port], fe, stats_glob(stats))
    await start_lbd(harness, cfg, port)

    async def client(i: int) -> str:
        try:
            data = await raw_request(port, GET, HOST, timeout=20)
        except (ConnectionError, TimeoutError) as exc:
            return f"refused:{type(exc).__name__}"
        if not data:
            return "closed"  # accepted before the pause landed, closed at once: clean
        return str(_status(data))

    results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(2 * maxconn))), 40)
    served = results.count("200")
    assert served + results.count("closed") == 2 * maxconn, results  # no hang, no error
    assert served >= maxconn, results  # the extra clients mostly waited in the backlog
    assert peak <= maxconn  # never more than maxconn connections through
    assert await metric(stats, "lbd_frontend_maxconn_pauses_total", 'frontend="fe"') >= 1
    # Everything recovers: all connections gone, a new client is served at once.
    for _ in range(100):
        if await metric(stats, "lbd_frontend_current_connections", 'frontend="fe"') == 0:
            break
        await asyncio.sleep(0.05)
    assert await metric(stats, "lbd_frontend_current_connections", 'frontend="fe"') == 0
    assert _status(await raw_request(port, GET)) == 200


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_no_fd_leak_after_10000_connections(harness: Harness, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "ehr", ("DNS:ehr.test",))
    backend = await harness.raw_backend(serve(lambda _r: response(200, b"ok")))
    plain_port, tls_port = free_port(), free_port()
    # Idle server connections are pooled on purpose; let them expire quickly so the count can
    # return to its baseline.
    cfg = config(plain_port, [backend.port], backend={"pool_idle_timeout": "500ms"})
    cfg["frontends"]["secure"] = {
        "bind": [f"{HOST}:{tls_port}"],
        "default_backend": "app",
        "tls": {"cert": str(cert), "key": str(key)},
    }
    lbd = await start_lbd(harness, cfg, plain_port)
    ctx = client_context()

    async def plain_request() -> None:
        assert _status(await raw_request(plain_port, GET)) == 200

    async def tls_request() -> None:
        reader, writer = await asyncio.open_connection(HOST, tls_port, ssl=ctx)
        writer.write(GET)
        data = await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)
        writer.close()
        assert _status(data) == 200

    async def connect_and_close(port: int) -> None:
        _, writer = await asyncio.open_connection(HOST, port)
        writer.close()

    async def tls_aborted_mid_handshake() -> None:
        # A ClientHello start, then the client vanishes (RST).
        _, writer = await asyncio.open_connection(HOST, tls_port)
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(16))
        await writer.drain()
        writer.transport.abort()

    async def half_request() -> None:
        _, writer = await asyncio.open_connection(HOST, plain_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        await writer.drain()
        writer.transport.abort()

    kinds = [
        plain_request,
        plain_request,
        tls_request,
        tls_aborted_mid_handshake,
        half_request,
        lambda: connect_and_close(plain_port),
        lambda: connect_and_close(tls_port),
    ]
    # Warm up (pools, lazily opened files), then the baseline.
    for kind in kinds:
        await kind()
    await asyncio.sleep(0.5)
    baseline = _fd_count(lbd.pid)

    total = 10_000
    done = 0
    errors: list[BaseException] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240

    async def worker(n: int) -> None:
        nonlocal done
        for i in range(n, total, 40):
            if loop.time() > deadline:
                return
            try:
                await asyncio.wait_for(kinds[i % len(kinds)](), IO_TIMEOUT)
            except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
                errors.append(exc)
            done += 1

    await asyncio.gather(*(worker(n) for n in range(40)))
    assert done == total, f"only {done} connections within the time bound"
    assert len(errors) < total // 100, errors[:5]  # a clean run has none; a few resets are ok
    # Everything closes (the aborted handshakes, the half requests time out at http_request)
    counts: list[int] = []
    for _ in range(150):
        counts.append(_fd_count(lbd.pid))
        if counts[-1] <= baseline:
            break
        await asyncio.sleep(0.1)
    fds = sorted(
        os.readlink(f"/proc/{lbd.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{lbd.pid}/fd")
    )
    assert counts[-1] <= baseline, (baseline, counts[-5:], fds)
    assert _status(await raw_request(plain_port, GET)) == 200  # and still serving
