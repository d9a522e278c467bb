"""One client connection: transport, request parser, keep-alive, pipelining, timeouts.

Rules (after uvicorn's httptools_impl): parser callbacks only collect bytes; work starts at
headers-complete, where the head is checked and an Exchange is created. Exchanges answer in
order: one is active, pipelined ones wait in `_queue` (bounded: reading pauses when it is deep).
Reading is paused for three independent reasons (server leg full, connecting with a large
buffered body, pipeline queue full) and resumes only when none holds. After a framing error
nothing more is parsed from this connection: the error is answered in turn, then it closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from lbd.errors import BadRequest, BodyTooLarge, HeadersTooLarge, UriTooLong
from lbd.http import wire
from lbd.http.head import RequestHead
from lbd.http.inspect import classify
from lbd.proxy.exchange import Exchange
from lbd.proxy.timer import Deadline

if TYPE_CHECKING:
    from lbd.runtime import FrontendRuntime, Runtime, RuntimeHolder

log = logging.getLogger("lbd.proxy")

AccessLogSink = Callable[[Exchange, float], None]

# Why reading is paused (bit flags; reading resumes when none is set).
PAUSE_UPSTREAM = 1  # the server connection's write buffer is full
PAUSE_CONNECT = 2  # still connecting and the buffered body is large
PAUSE_QUEUE = 4  # too many pipelined requests waiting
PAUSE_ERROR = 8  # a framing error: nothing more will be read

MAX_PIPELINE = 32

# Connection phases, for choosing the timeout that applies.
IDLE = 0  # between requests: timeouts.keep_alive, closed silently
HEADERS = 1  # reading a request head: timeouts.http_request → 408
BODY = 2  # reading a request body: timeouts.client
WAIT = 3  # request read, the server is working: only the server timeout applies


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_closing",
        "_fe",
        "_frontend_name",
        "_header_bytes",
        "_headers",
        "_holder",
        "_parser",
        "_parsing",
        "_pause",
        "_peer_ip_obj",
        "_phase",
        "_queue",
        "_raw_left",
        "_started_at",
        "_tunnel",
        "_url",
        "_writing_paused",
        "access_log",
        "deadline",
        "loop",
        "peer_ip",
        "peer_port",
        "proto",
        "runtime",
        "transport",
    )

    def __init__(
        self,
        holder: RuntimeHolder,
        frontend_name: str,
        proto: bytes = b"http",
        access_log: AccessLogSink | None = None,
    ) -> None:
        # --- connection lifetime
        self.loop = asyncio.get_running_loop()
        self._holder = holder
        self._frontend_name = frontend_name
        self.proto = proto
        self.access_log = access_log
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.deadline = Deadline(self.loop, self._on_timeout)
        self.peer_ip = b"-"
        self.peer_port = 0
        self._peer_ip_obj: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._closing = False
        self._pause = 0
        self._writing_paused = False
        self._phase = HEADERS
        # --- exchanges in order: the one answering, then pipelined ones (or error replies)
        self._active: Exchange | None = None
        # Created on the first pipelined request: an empty deque costs ~760 bytes per idle
        # connection, and there may be 25,000 of them.
        self._queue: deque[Exchange | bytes] | None = None
        self._parsing: Exchange | None = None  # whose request body is being read
        self._raw_left = 0  # Content-Length body bytes still to relay without the parser
        self._tunnel: Exchange | None = None
        # --- the request head being parsed
        self.runtime: Runtime = holder.runtime
        self._fe: FrontendRuntime = self.runtime.frontends[frontend_name]
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._started_at = 0.0

    # asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0].encode()
            self.peer_port = peer[1]
        fc = self._fe.counters
        fc.conn_total += 1
        fc.conn_cur += 1
        self.deadline.set(self._fe.timeouts.http_request)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.tunnel_to_upstream(data)
            return
        if self._pause & PAUSE_ERROR:
            return
        if self._raw_left:
            data = self._relay_raw_body(data)
            if not data:
                ex = self._active
                if ex is not None:
                    ex.flush_upstream()
                return
        if self._phase == IDLE:
            self._phase = HEADERS
            self.deadline.set(self._fe.timeouts.http_request)
        self._feed(data)
        ex = self._parsing
        if ex is not None and ex.head.content_length and not ex.req_done and not self._closing:
            # The rest of a Content-Length body comes in later reads: relay them as they are,
            # without httptools copying every chunk through on_body.
            self._raw_left = ex.head.content_length - ex.req_body_bytes
        if self._phase == HEADERS:
            # A head still incomplete: bound what it may grow to (an upper bound, since this
            # read may also hold the end of a previous pipelined request).
            self._header_bytes += len(data)
            limits = self._fe.limits
            if self._header_bytes > limits.max_header_bytes + limits.max_uri_bytes + 1024:
                self._bad_request(HeadersTooLarge("headers-too-large"))
                return
        ex = self._active
        if ex is not None:
            ex.flush_upstream()

    def _relay_raw_body(self, data: bytes) -> bytes:
        """Relay Content-Length body bytes; return what follows the body (a pipelined request)."""
        ex = self._parsing
        left = self._raw_left
        if ex is None:  # the exchange was answered and dropped meanwhile
            self._raw_left = 0
            return b""
        n = len(data)
        self.deadline.set(self._fe.timeouts.client)
        if n < left:
            self._raw_left = left - n
            ex.request_body(data)
            return b""
        self._raw_left = 0
        ex.request_body(data[:left] if n > left else data)
        # httptools still expects those body bytes: the next request needs a fresh parser.
        self._parser = httptools.HttpRequestParser(self)
        self.on_message_complete()
        return data[left:] if n > left else b""

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                rest = data[upgrade.args[0] :]
                ex = self._last_exchange()
                if ex is not None and ex.head.upgrade is not None:
                    # Bytes after an upgrade request belong to the tunnel, if the server agrees.
                    ex.tunnel_pending = [rest] if rest else []
                    self._pause_reading(PAUSE_QUEUE)
                    return
                # We refused the upgrade (h2c): the connection stays HTTP/1.1.
                if not rest:
                    return
                data = rest
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, BadRequest):
                    self._bad_request(cause)
                    return
                raise
            except httptools.HttpParserError as exc:
                self._bad_request(BadRequest("bad-request-syntax", str(exc)))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.deadline.cancel()
        self._fe.counters.conn_cur -= 1
        if self._active is not None:
            self._active.client_lost()
            self._active = None
        if self._queue is not None:
            for item in self._queue:
                if isinstance(item, Exchange):
                    item.client_lost()
            self._queue = None
        if self._parsing is not None:
            self._parsing.client_lost()
            self._parsing = None

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading the server.
        self._writing_paused = True
        ex = self._active
        if ex is not None and ex.upstream is not None and ex.upstream.transport is not None:
            ex.upstream.transport.pause_reading()
        self.deadline.set(self._fe.timeouts.client)

    def resume_writing(self) -> None:
        self._writing_paused = False
        ex = self._active
        if ex is not None and ex.upstream is not None and ex.upstream.transport is not None:
            ex.upstream.transport.resume_reading()
        if self._phase in (IDLE, WAIT):
            self.deadline.clear()

    # httptools callbacks -----------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._started_at = self.loop.time()
        # One snapshot per request: a reload in the middle of it changes nothing for it.
        self.runtime = self._holder.runtime
        self._fe = self.runtime.frontends.get(self._frontend_name, self._fe)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._fe.limits.max_uri_bytes:
            raise UriTooLong("uri-too-long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header line: keep it to one append. Size limits are checked per read
        # while the head is incomplete (data_received) and exactly at headers-complete.
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._closing:
            return
        p = self._parser
        head = RequestHead(p.get_method(), self._url, p.get_http_version().encode(), self._headers)
        limits = self._fe.limits
        if len(self._headers) > limits.max_headers:
            raise HeadersTooLarge("too-many-headers")
        if classify(head) > limits.max_header_bytes:
            raise HeadersTooLarge("headers-too-large")
        max_body = limits.max_body_bytes
        if head.content_length is not None and head.content_length > max_body:
            raise BodyTooLarge("body-too-large")
        ex = Exchange(self, head, self.runtime, self._fe, self._started_at)
        if head.has_body:
            self._parsing = ex
            self._phase = BODY
            self.deadline.set(self._fe.timeouts.client)
        else:
            self._phase = WAIT
            self.deadline.clear()
        if self._active is None:
            self._active = ex
            ex.start()
        else:
            if self._queue is None:
                self._queue = deque()
            self._queue.append(ex)
            if len(self._queue) >= MAX_PIPELINE:
                self._pause_reading(PAUSE_QUEUE)
        if not head.has_body:
            ex.request_complete()

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is None:
            return
        if ex.req_body_bytes + len(body) > self._fe.limits.max_body_bytes:
            raise BodyTooLarge("body-too-large")
        ex.request_body(body)
        self.deadline.set(self._fe.timeouts.client)

    def on_message_complete(self) -> None:
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            self._phase = WAIT
            if not self._writing_paused:
                self.deadline.clear()
            ex.request_complete()

    # called by the exchange -----------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)

    def exchange_finished(self, ex: Exchange) -> None:
        if ex is not self._active:
            return
        self._active = None
        if ex.client_close or self._closing:
            self._close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            self._resume_reading(PAUSE_QUEUE)
            if isinstance(nxt, bytes):
                self.write(nxt)
                self._close()
                return
            self._active = nxt
            nxt.start()
            nxt.flush_upstream()
            return
        if self._parsing is None and self._phase == WAIT:
            self._phase = IDLE
            self.deadline.set(self._fe.timeouts.keep_alive)

    def close_if_idle(self) -> None:
        """Graceful stop: close now unless a request is in progress."""
        if self._active is None and not self._queue and self._parsing is None:
            if self._phase == IDLE or (self._phase == HEADERS and not self._url):
                self._close()

    def abort_after(self, ex: Exchange) -> None:
        """The response to `ex` broke after its head was sent: close without another byte."""
        self._active = None
        self._close()

    def start_tunnel(self, ex: Exchange) -> None:
        self._tunnel = ex
        self._phase = WAIT
        self.deadline.cancel()
        self._resume_reading(PAUSE_QUEUE)

    def pause_reading_for_upstream(self) -> None:
        self._pause_reading(PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume_reading(PAUSE_UPSTREAM)

    def pause_reading_for_connect(self) -> None:
        self._pause_reading(PAUSE_CONNECT)

    def resume_reading_for_connect(self) -> None:
        if self._pause & PAUSE_CONNECT:
            self._resume_reading(PAUSE_CONNECT)

    def peer_ip_object(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self._peer_ip_obj is None and self.peer_ip != b"-":
            self._peer_ip_obj = ipaddress.ip_address(self.peer_ip.decode())
        return self._peer_ip_obj

    # internals -----------

    def _last_exchange(self) -> Exchange | None:
        for item in reversed(self._queue or ()):
            if isinstance(item, Exchange):
                return item
        return self._active

    def _pause_reading(self, reason: int) -> None:
        was = self._pause
        self._pause = was | reason
        if not was and self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def _resume_reading(self, reason: int) -> None:
        if not self._pause & reason:
            return
        self._pause &= ~reason
        if not self._pause and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def _bad_request(self, err: BadRequest) -> None:
        """Answer a request lbd refuses, in its turn, then close; count it by reason."""
        self._pause_reading(PAUSE_ERROR)
        fc = self._fe.counters
        malformed = fc.malformed
        malformed[err.reason] = malformed.get(err.reason, 0) + 1
        log.debug("bad request from %s: %s", self.peer_ip.decode(), err)
        response = wire.error_response(err.status, close=True)
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            if ex is self._active:
                if ex.resp_started:
                    self.abort_after(ex)
                    ex.client_lost()
                else:
                    ex.req_done = True
                    ex.term = "PR"
                    ex.reply_local(err.status, response)  # counted with the exchange
                return
            # Pipelined behind another request: it never started; answer in its place.
            fc.responses[err.status // 100] += 1
            ex.done = True  # counted here, never started, nothing to release
            queue = self._queue or deque()
            self._queue = deque(item if item is not ex else response for item in queue)
            return
        fc.requests += 1  # refused before an exchange existed: still a request received
        fc.responses[err.status // 100] += 1
        if self._active is None:
            self.write(response)
            self._close()
        else:
            if self._queue is None:
                self._queue = deque()
            self._queue.append(response)

    def _on_timeout(self) -> None:
        phase = self._phase
        if phase == HEADERS:
            if self._url or self._headers:
                # Slowloris: a head that never completes gets 408 (HAProxy's `timeout
                # http-request`); a connection that never sent a byte is closed silently.
                self._bad_request(BadRequest("request-timeout", status=408))
            else:
                self._close()
        elif phase == BODY and self._active is not None and not self._active.resp_started:
            self._pause_reading(PAUSE_ERROR)
            ex = self._active
            self._parsing = None
            ex.req_done = True
            ex.term = "cR"
            ex.reply_local(408, wire.error_response(408, close=True))
        elif phase == IDLE:
            self._close()
        else:
            # A client that stopped reading its response, or stalled mid-body.
            if self.transport is not None:
                self.transport.abort()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.deadline.cancel()
            if self.transport is not None:
                self.transport.close()
