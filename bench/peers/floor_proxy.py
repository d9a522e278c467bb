"""The floor: the least a uvloop + httptools reverse proxy can do per request, for the bench's
`floor` row. It tells how much of lbd's cost is Python itself and how much is lbd's features.

What it does, and no more: one upstream connection per client connection (opened on the first
request, kept alive), request and response heads rebuilt from httptools callbacks with the
hop-by-hop headers dropped and X-Forwarded-For added, bodies forwarded as the parser hands
them over (Content-Length or chunked, re-chunked), pipelining not supported, no timeouts, no
retries, no balancing (one upstream), no counters, no logging. Bench tooling only.

    python bench/peers/floor_proxy.py --port 8081 --upstream 127.0.0.1:9001
"""

from __future__ import annotations

import asyncio

import httptools
import peer_cli  # bench/peers/, next to this script

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade")
)


class Upstream(asyncio.Protocol):
    """The server leg: parses responses and writes them to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: list[bytes] = []
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's, not a subclass
        for piece in self.client.waiting:
            self.transport.write(piece)  # type: ignore[union-attr]
        self.client.waiting.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream = None
        if self.client.transport is not None:
            self.client.transport.close()

    def on_status(self, status: bytes) -> None:
        self.head = [b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), status)]
        self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # Inline in both legs on purpose: a shared helper costs a Python call per header.
        lower = name.lower()
        if lower in HOP_BY_HOP:
            return
        if lower == b"transfer-encoding":
            self.chunked = True
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        if self.client.closing:
            self.head.append(b"Connection: close\r\n")
        self.head.append(b"\r\n")
        self.client.write(b"".join(self.head))

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.client.write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.client.write(body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.client.write(b"0\r\n\r\n")
        if self.client.closing and self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    """The client leg: parses requests and writes them to the upstream."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_address = upstream
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.waiting: list[bytes] = []
        self.url = b""
        self.head: list[bytes] = []
        self.chunked = False
        self.closing = False
        self.connecting: asyncio.Task[object] | None = None
        self.peer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's, not a subclass
        self.peer = transport.get_extra_info("peername")[0].encode()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            self.upstream = upstream = Upstream(self)
            self.waiting.append(data)
            host, port = self.upstream_address
            loop = asyncio.get_running_loop()
            self.connecting = loop.create_task(loop.create_connection(lambda: upstream, host, port))
        elif upstream.transport is None:
            self.waiting.append(data)
        else:
            upstream.transport.write(data)

    def on_url(self, url: bytes) -> None:
        self.url = url
        self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # Inline in both legs on purpose: a shared helper costs a Python call per header.
        lower = name.lower()
        if lower in HOP_BY_HOP:
            return
        if lower == b"transfer-encoding":
            self.chunked = True
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        self.closing = not self.parser.should_keep_alive()
        head = b"%s %s HTTP/1.1\r\n%sX-Forwarded-For: %s\r\n\r\n" % (
            method, self.url, b"".join(self.head), self.peer,
        )  # fmt: skip
        self.head.clear()
        self.send(head)

    def on_body(self, body: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.send(b"0\r\n\r\n")


async def serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    peer_cli.run(serve, __doc__.splitlines()[0])
