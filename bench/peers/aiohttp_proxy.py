"""A minimal pure-Python reverse proxy (aiohttp server + aiohttp client): the peer lbd is
compared with in the bench's `aiohttp-proxy` row.

Rules: what a competent developer would write in an afternoon and no less — uvloop, one
ClientSession with a keep-alive connector (no per-request connection), round robin over the
upstreams, request and response bodies streamed in chunks (never buffered whole), hop-by-hop
headers dropped. Bench tooling only; never part of lbd.

    python bench/peers/aiohttp_proxy.py --port 8081 --upstream 127.0.0.1:9001 [--upstream ...]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

# RFC 9110 §7.6.1 hop-by-hop fields, plus the framing aiohttp recomputes on each leg.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
        "Upgrade", "Content-Length", "Host",
    )
)  # fmt: skip
CHUNK = 64 * 1024
SESSION = web.AppKey("session", aiohttp.ClientSession)


class RoundRobin:
    """The next upstream, in turn."""

    def __init__(self, upstreams: list[str]) -> None:
        self._cycle = itertools.cycle(upstreams)

    def pick(self) -> str:
        return next(self._cycle)


UPSTREAMS = web.AppKey("upstreams", RoundRobin)


async def proxy(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAMS].pick()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = request.content if request.body_exists else None
    async with request.app[SESSION].request(
        request.method,
        f"http://{upstream}{request.raw_path}",
        headers=headers,
        data=body,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream_response:
        response = web.StreamResponse(
            status=upstream_response.status,
            headers={
                k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP
            },
        )
        if upstream_response.content_length is not None:
            response.content_length = upstream_response.content_length
        await response.prepare(request)
        async for chunk in upstream_response.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=300)
    timeout = aiohttp.ClientTimeout(total=60)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=["User-Agent"]
    )
    yield
    await app[SESSION].close()


def build_app(upstreams: list[str]) -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app[UPSTREAMS] = RoundRobin(upstreams)
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True, help="HOST:PORT (repeatable)")
    args = p.parse_args()
    uvloop.install()
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None,
                print=None, backlog=4096)  # fmt: skip


if __name__ == "__main__":
    main()
