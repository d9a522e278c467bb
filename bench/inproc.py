"""The proxy's own cost per request, without sockets: drives the real ClientConnection and
UpstreamConnection with fake transports, so kernel time and load-generator noise drop out.

    .venv/bin/python bench/inproc.py                 # µs per request (noisy on a shared box)
    .venv/bin/python bench/inproc.py --profile       # cProfile, top functions by own time
    .venv/bin/python bench/inproc.py --floor         # the same for bench/peers/floor_proxy.py
    bench/instructions.sh                            # callgrind: instructions per request

Wall-clock numbers on a shared VM vary ±50% run to run; the instruction count from callgrind is
repeatable and is what to compare before and after a hot-path change.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from lbd.config.schema import (
    Address,
    Backend,
    Config,
    Frontend,
    GlobalConfig,
    LogConfig,
    Matcher,
    Module,
    Server,
)
from lbd.logs.access import AccessLog
from lbd.proxy.client import ClientConnection
from lbd.proxy.upstream import UpstreamConnection
from lbd.runtime import RuntimeHolder, build_runtime

# A browser-like request and an nginx-like response: the headers a hospital's EHR really sees.
REQUEST = (
    b"GET /accueil/index.html?x=1 HTTP/1.1\r\nHost: ehr.example\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120\r\nAccept: text/html\r\n"
    b"Accept-Language: fr-FR\r\nAccept-Encoding: gzip, deflate\r\nCookie: JSESSIONID=abc\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 20:28:44 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 200\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 20:28:44 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-c8"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 200
)


class FakeTransport:
    """Just enough of a transport: writes are counted, never sent."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _config(access_log: str = "off") -> Config:
    modules = (
        Module("accueil", Matcher(path_prefix="/accueil")),
        Module("dmu", Matcher(path_prefix="/dmu")),
        Module("static", Matcher(path_regex=r"\.(css|js|png)$")),
    )
    frontend = Frontend(
        name="f", bind=(Address("127.0.0.1", 1),), default_backend="b", modules=modules
    )
    servers = tuple(Server(name=f"s{i}", address=Address("127.0.0.1", 2 + i)) for i in range(2))
    return Config(
        path="inproc",
        global_=GlobalConfig(log=LogConfig(access=access_log)),
        frontends=(frontend,),
        backends=(Backend(name="b", servers=servers),),
    )


def _floor() -> Callable[[], None]:
    """One request through bench/peers/floor_proxy.py: the least a Python proxy does."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
    import floor_proxy  # type: ignore[import-not-found]

    client = floor_proxy.Client(("127.0.0.1", 2))
    client.connection_made(FakeTransport())  # type: ignore[arg-type]
    upstream = client.upstream = floor_proxy.Upstream(client)
    upstream.connection_made(FakeTransport())  # type: ignore[arg-type]

    def one() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    return one


def _lbd(access_log: str) -> Callable[[], None]:
    """One request through lbd's ClientConnection and UpstreamConnection."""
    loop = asyncio.get_running_loop()
    holder = RuntimeHolder(build_runtime(_config(access_log), None, loop))
    if access_log != "off":  # as lbd/process/worker.py does
        holder.runtime.access_log = AccessLog(access_log, "httplog")
    for state in holder.runtime.backends["b"].servers:
        upstream = UpstreamConnection(loop, state.pool)
        upstream.connection_made(FakeTransport())  # type: ignore[arg-type]
        state.pool.release(upstream)
    client = ClientConnection(holder, "f")
    client.connection_made(FakeTransport())  # type: ignore[arg-type]

    def one() -> None:
        client.data_received(REQUEST)
        ex = client._active
        assert ex is not None and ex.upstream is not None
        ex.upstream.data_received(RESPONSE)

    return one


async def run(requests: int, profile: bool, floor: bool, access_log: str) -> float:
    one = _floor() if floor else _lbd(access_log)
    gc.collect()
    gc.freeze()
    for _ in range(1000):  # warm-up
        one()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(requests):
        one()
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requests", nargs="?", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--floor", action="store_true", help="bench/peers/floor_proxy.py instead")
    parser.add_argument("--access-log", default="off", help="lbd's log.access (a file path)")
    args = parser.parse_args()
    per_request = uvloop.run(run(args.requests, args.profile, args.floor, args.access_log))
    print(f"{per_request * 1e6:.2f} µs per request (in-process, no syscalls)")


if __name__ == "__main__":
    main()
