"""One client connection: transport, request parser, keep-alive, pipelining, timeouts.

Rules (after uvicorn's httptools_impl): parser callbacks only collect bytes; work starts at
headers-complete, where the head is checked and an Exchange is created. Exchanges answer in
order: one is active, pipelined ones wait in `_queue` (bounded: reading pauses when it is deep).
Reading is paused for three independent reasons (server leg full, connecting with a large
buffered body, pipeline queue full) and resumes only when none holds. After a framing error
nothing more is parsed from this connection: the error is answered in turn, then it closes.

Request inspection (lbd.http.inspect, lbd.http.target) runs at headers-complete: framing, Host,
version and method first, then the request-target, whose clean common case costs one translate.
A target with violations is classified into its module (on the normalized path) and that
module's url_policy decides: reject (400), log (forward unchanged), normalize (forward the
normalized target; reject what cannot be made safe), or "would reject" under dry-run. Every
malformed request is counted by reason (`counters.malformed`) and recorded, masked, in the
frontend's capture store. A request body must progress by BODY_MIN_RATE bytes/s over each
window of min(BODY_RATE_WINDOW, timeouts.client) while lbd is reading it (→ 408), so a client
trickling a byte every few seconds cannot hold a connection and a server slot forever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

from lbd.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    RequestTimeout,
    UriTooLong,
    VersionNotSupported,
)
from lbd.http import wire
from lbd.http.head import RequestHead, request_line_version
from lbd.http.inspect import (
    HeadRejected,
    TargetRejected,
    classify,
    inspect_target,
    is_http09,
    locate_parse_error,
    other_protocol,
    parser_error,
)
from lbd.http.target import TargetReport
from lbd.inspect import mask
from lbd.inspect.store import (
    LOGGED,
    NO_MODULE,
    NORMALIZED,
    REJECTED,
    WOULD_REJECT,
    Sample,
)
from lbd.limits.gate import PausableServer
from lbd.limits.rate import Limited, Source
from lbd.proxy.exchange import Exchange
from lbd.proxy.timer import Deadline
from lbd.tls.upgrade import start_server_tls

if TYPE_CHECKING:
    from lbd.runtime import FrontendRuntime, Runtime, RuntimeHolder

log = logging.getLogger("lbd.proxy")


# Why reading is paused (bit flags; reading resumes when none is set).
PAUSE_UPSTREAM: Final = 1  # the server connection's write buffer is full
PAUSE_CONNECT: Final = 2  # still connecting and the buffered body is large
PAUSE_QUEUE: Final = 4  # too many pipelined requests waiting
PAUSE_ERROR: Final = 8  # a framing error: nothing more will be read

MAX_PIPELINE: Final = 32

# Minimum request-body rate while lbd reads it: Apache mod_reqtimeout's default MinRate (500
# bytes/s), judged over windows of min(BODY_RATE_WINDOW, timeouts.client). nginx and HAProxy
# only bound the time between two reads (client_body_timeout, timeout client).
BODY_MIN_RATE: Final = 500
BODY_RATE_WINDOW: Final = 10.0

# A keep-alive connection idle this long drops its request parser (~1 KB with the callbacks it
# binds) and builds a fresh one when the next request arrives: 25,000 idle browser connections
# then cost ~25 MB less, while back-to-back requests never pay for a new parser.
IDLE_TRIM_AFTER: Final = 1.0
# The header list of a connection between requests: shared, never appended to (each request's
# on_message_begin gives it a fresh list first). An empty list of its own cost 56 bytes per idle
# connection.
NO_HEADERS: Final[list[tuple[bytes, bytes]]] = []

# A connection over its source's max_connections has this long (at most timeouts.http_request)
# to send the request that gets its 429; silent, it is closed: a source cannot hold more
# connections than its limit plus what it opens in this grace.
REFUSE_GRACE: Final = 1.0

# Connection phases, for choosing the timeout that applies.
IDLE: Final = 0  # between requests: timeouts.keep_alive, closed silently
HEADERS: Final = 1  # reading a request head: timeouts.http_request → 408
BODY: Final = 2  # reading a request body: timeouts.client
WAIT: Final = 3  # request read, the server is working: only the server timeout applies


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_closing",
        "_data",
        "_fe",
        "_frontend_name",
        "_head",
        "_header_bytes",
        "_headers",
        "_holder",
        "_in_message",
        "_lost",
        "_message_at_start",
        "_parser",
        "_parsing",
        "_pause",
        "_peer_ip_obj",
        "_phase",
        "_queue",
        "_rate_handle",
        "_rate_paused",
        "_raw_left",
        "_refuse",
        "_source",
        "_started_at",
        "_tunnel",
        "_url",
        "_url_chunk",
        "_writing_paused",
        "accept_switch",
        "deadline",
        "loop",
        "next_open",
        "peer_ip",
        "peer_port",
        "prev_open",
        "proto",
        "registry",
        "runtime",
        "transport",
    )

    def __init__(
        self,
        holder: RuntimeHolder,
        frontend_name: str,
        proto: bytes = b"http",
    ) -> None:
        # The flags first: compiled, attributes are laid out in the order of their first
        # assignment, and one-byte flags between pointers cost 8 bytes each with padding.
        self._closing = False
        self._lost = False  # connection_lost ran (a failed handshake may report it twice)
        self._writing_paused = False
        self._in_message = False  # see "for inspection records" below
        self._message_at_start = False
        self._rate_paused = False  # see "request-body rate" below
        # --- connection lifetime
        self.loop = asyncio.get_running_loop()
        self._holder = holder
        self._frontend_name = frontend_name
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = None  # built on the first byte
        self.deadline = Deadline(self.loop, self)
        self.peer_ip = b"-"
        self.peer_port = 0
        self._peer_ip_obj: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._pause = 0
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
        self._headers: list[tuple[bytes, bytes]] = NO_HEADERS
        self._header_bytes = 0
        self._started_at = 0.0
        self._head: RequestHead | None = None  # once headers-complete was reached
        # --- for inspection records: the bytes being parsed, and whether the current message
        # began at their first byte (then a parser error can be located and excerpted)
        self._data = b""
        self._url_chunk = b""  # the read in which the target ended
        # --- request-body rate (see BODY_MIN_RATE)
        self._rate_handle: asyncio.TimerHandle | None = None
        # --- edge protection (lbd.limits): the per-source entry this connection counts in,
        # the 429 reason when it is over its source's connection limit, and the listener
        # (PausableServer) that accepted it, for the frontend's maxconn gate
        self._source: Source | None = None
        self._refuse = ""
        self.accept_switch: PausableServer | None = None
        # The worker's set of open connections (a graceful stop walks it), when it keeps one.
        # An attribute rather than a subclass: a compiled class admits no Python subclass.
        self.registry: OpenConnections | None = None
        # Links in the registry's list (OpenConnections), when listed there.
        self.prev_open: ClientConnection | None = None
        self.next_open: ClientConnection | None = None

    # asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self.registry is not None:
            self.registry.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer_ip_bytes(peer[0])
            self.peer_port = peer[1]
        fe = self._fe
        fc = fe.counters
        fc.conn_total += 1
        fc.conn_cur += 1
        if not self._admit(fe, transport):
            return
        # timeouts.http_request runs from the accept: it covers a TLS handshake too
        timeout = fe.timeouts.http_request
        self.deadline.set(min(REFUSE_GRACE, timeout) if self._refuse else timeout)
        switch = self.accept_switch
        tls = switch.ssl_context if switch is not None else None
        if tls is None:
            transport.set_write_buffer_limits(high=256 * 1024)
            return
        # Admitted: only now the handshake (the listener accepted plain TCP, lbd.limits.gate).
        start_server_tls(self.loop, transport, self, tls, timeout, self._tls_ready)

    def _tls_ready(self, transport: asyncio.Transport | None, exc: BaseException | None) -> None:
        """The handshake ended. A deadline firing meanwhile closed the plain transport, which
        failed it; start_tls reports a failure to the protocol in some cases only, and a client
        that closed before the handshake began comes back as a success on a closed transport
        (uvloop 0.23), with no connection_lost to follow."""
        if transport is None or self._closing or transport.is_closing():
            if transport is not None:
                transport.close()
            self.connection_lost(exc if isinstance(exc, Exception) else None)
            return
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)

    def _admit(self, fe: FrontendRuntime, transport: asyncio.Transport) -> bool:
        """Accept-time checks: source access list, frontend maxconn, per-source connections.
        A refused connection is closed before a byte is read (HAProxy's `tcp-request
        connection reject`); it was counted like any other so connection_lost evens it out."""
        fc = fe.counters
        acl = fe.acl
        if acl is not None and not acl.permits(self.peer_ip.decode()):
            fc.denied_connections += 1
            self._closing = True
            transport.close()
            return False
        gate = fe.gate
        if gate is not None and not gate.opened(fc, self.accept_switch):
            self._closing = True
            transport.close()
            return False
        limiter = fe.limiter
        if limiter is not None:
            self._source = limiter.connect(self.peer_ip, self.loop.time())
            if self._source is None:
                self._refuse = "connections"  # 429 to a request sent within REFUSE_GRACE
        return True

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
        self._message_at_start = not self._in_message
        if self._parser is None:
            self._parser = httptools.HttpRequestParser(self)
        self._feed(data)
        ex = self._parsing
        if ex is not None and not self._closing:
            if ex.head.content_length and not ex.req_done:
                # The rest of a Content-Length body comes in later reads: relay them as they
                # are, without httptools copying every chunk through on_body.
                self._raw_left = ex.head.content_length - ex.req_body_bytes
            if self._rate_handle is None:
                self._arm_rate_check(ex)
        if self._phase == HEADERS:
            # A head still incomplete: bound what it may grow to (an upper bound, since this
            # read may also hold the end of a previous pipelined request).
            self._header_bytes += len(data)
            limits = self._fe.limits
            if self._header_bytes > limits.max_header_bytes + limits.max_uri_bytes + 1024:
                self._bad_request(HeadersTooLarge("headers-too-large"))
                return
            url = self._url
            if url and not self._headers and data[-1:] == b"\n" and is_http09(data, url):
                # `GET /` CRLF: llhttp waits for headers an HTTP/0.9 client never sends.
                self._bad_request(VersionNotSupported("http09", "HTTP/0.9"), data)
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
        self._data = data
        while True:
            try:
                self._parser.feed_data(data)  # type: ignore[union-attr]  # set by data_received
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
                data = self._data = rest
                self._message_at_start = True
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, Limited):
                    self._too_many(cause)
                    return
                if isinstance(cause, BadRequest):
                    self._bad_request(cause)
                    return
                raise
            except httptools.HttpParserError as exc:
                self._bad_request(parser_error(str(exc), data, self._url), data)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self.registry is not None:
            self.registry.discard(self)
        self._closing = True
        # The parser holds bound methods of this object and the deadline one: let go of both,
        # so the connection is freed now by reference counting rather than by the cyclic GC.
        self.deadline.release()
        self._parser = None
        if self._rate_handle is not None:
            self._rate_handle.cancel()
            self._rate_handle = None
        fc = self._fe.counters
        fc.conn_cur -= 1
        gate = self._fe.gate
        if gate is not None:
            gate.closed(fc)
        if self._source is not None:
            self._source.conns -= 1
            self._source = None
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
        self._in_message = True
        self._url = b""
        self._headers = []
        self._head = None
        self._header_bytes = 0
        self._started_at = self.loop.time()
        # One snapshot per request: a reload in the middle of it changes nothing for it.
        self.runtime = self._holder.runtime
        self._fe = self.runtime.frontends.get(self._frontend_name, self._fe)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._url_chunk = self._data
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
        assert p is not None  # its own callback
        method = p.get_method()
        version = None
        if self._message_at_start:  # the request line starts this read (checked there)
            version = request_line_version(self._data, method, self._url)
        from_line = version is not None
        if version is None:
            version = p.get_http_version().encode()
        head = RequestHead(method, self._url, version, self._headers)
        self._head = head
        fe = self._fe
        limits = fe.limits
        if len(self._headers) > limits.max_headers:
            raise HeadersTooLarge("too-many-headers")
        if classify(head, fe.allowed_methods) > limits.max_header_bytes:
            raise HeadersTooLarge("headers-too-large")
        if head.version == b"1.0":
            # RTSP/1.0 and ICE/1.0 request lines read as HTTP/1.0 (rare path: 1.0 only).
            proto = other_protocol(self._url_chunk, self._url)
            if proto is not None:
                raise VersionNotSupported("bad-protocol", proto.decode())
        report = inspect_target(head)
        if report is not None:
            self._apply_url_policy(head, report)
        elif from_line and version == b"1.1" and not head.needs_filter:
            # The whole head is in this read, from its first byte, with nothing to drop: keep
            # it to forward as is.
            data = self._data
            end = data.find(b"\r\n\r\n")
            if end > 0:
                head.raw = data[: end + 2]
        if fe.limiter is not None:
            self._check_source(fe)
        max_body = limits.max_body_bytes
        if head.content_length is not None and head.content_length > max_body:
            # Before any byte goes to a server, so before any `100 Continue` can be sent.
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
        self._in_message = False
        self._message_at_start = False  # a next message in this read starts later in it
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
            if self._in_message:
                # A pipelined request's head began in an earlier read and is not complete yet:
                # the connection is not idle (no trim, no graceful close), its head is timed.
                self._phase = HEADERS
                self.deadline.set(self._fe.timeouts.http_request)
                return
            self._phase = IDLE
            self.deadline.set(min(IDLE_TRIM_AFTER, self._fe.timeouts.keep_alive))

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
        self._rate_paused = True  # lbd stopped reading: this window says nothing of the client
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

    def _bad_request(self, err: BadRequest, raw: bytes | None = None) -> None:
        """Answer a request lbd refuses, in its turn, then close; count it by reason and record
        it in the capture store. `raw` is the read llhttp refused, if that is why."""
        self._pause_reading(PAUSE_ERROR)
        fc = self._fe.counters
        malformed = fc.malformed
        malformed[err.reason] = malformed.get(err.reason, 0) + 1
        log.debug("bad request from %s: %s", self.peer_ip.decode(), err)
        try:
            self._capture_refusal(err, raw)
        except Exception:  # a record must never keep the client from its answer
            log.exception("recording a refused request failed")
        response = wire.error_response(err.status)
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

    # per-source limits -----------

    def _check_source(self, fe: FrontendRuntime) -> None:
        """Raise Limited (→ 429) when this source is over its limits."""
        if self._refuse:
            raise Limited(self._refuse, 1)
        src = self._source
        limiter = fe.limiter
        if src is not None and limiter is not None:
            wait = limiter.take(src, self.peer_ip, self.loop.time())
            if wait:
                raise Limited("rate", wait)

    def _too_many(self, err: Limited) -> None:
        """Answer 429 with Retry-After in this request's turn, log it (term PR), then close."""
        self._pause_reading(PAUSE_ERROR)
        fe = self._fe
        fc = fe.counters
        if err.reason == "rate":
            fc.limited_rate += 1
        else:
            fc.limited_connections += 1
        head = self._head
        if self._active is None and head is not None:
            ex = Exchange(self, head, self.runtime, fe, self._started_at)
            ex.req_done = True  # its body, if any, is never read: the connection closes
            ex.term = "PR"
            self._active = ex
            ex.reply_local(429, err.response)
            return
        # Pipelined behind another request: answered in its turn, counted here.
        fc.requests += 1
        fc.responses[4] += 1
        if self._queue is None:
            self._queue = deque()
        self._queue.append(err.response)

    # request inspection -----------

    def _apply_url_policy(self, head: RequestHead, report: TargetReport) -> None:
        """Forward, normalize or refuse a target that is not clean, per its module's policy."""
        fe = self._fe
        policies = fe.url_policies
        violations = report.violations
        normalized = report.normalized
        if not violations and not policies.modules:
            if policies.default == "normalize" and normalized is not None:
                head.target = normalized
            return
        router = fe.router
        src = self.peer_ip_object() if router.needs_src else None
        module = router.module(head, src)  # head.path is the normalized path
        policy = policies.for_module(module)
        if not violations:  # legal but not in normal form (`//a`, `/%7Ea`, absolute-form)
            if policy == "normalize" and normalized is not None:
                head.target = normalized
            return
        if policy == "normalize" and normalized is not None:
            head.target = normalized
            action = NORMALIZED
        elif policy == "log":
            action = LOGGED  # head.target stays as received (origin-form)
        elif policies.dry_run:
            action = WOULD_REJECT
        else:
            raise TargetRejected(report, module, self._url)
        reason = violations[0].reason
        malformed = fe.counters.malformed
        malformed[reason] = malformed.get(reason, 0) + 1
        offset = violations[0].offset
        line = mask.request_line(head.method, self._url, head.version)
        fe.captures.record(
            reason,
            module,
            Sample(
                time=time.time(),
                client=self._client_text(),
                method=mask.method_text(head.method),
                action=action,
                status=0,
                reasons=report.reasons,
                offset=offset,
                where="target",
                excerpt=mask.excerpt(line, offset + len(head.method) + 1),
            ),
        )

    def _client_text(self) -> str:
        ip = self.peer_ip.decode()
        return f"[{ip}]:{self.peer_port}" if ":" in ip else f"{ip}:{self.peer_port}"

    def _capture_refusal(self, err: BadRequest, raw: bytes | None) -> None:
        """Record a refused request: what it was, where it went wrong, a masked excerpt."""
        head = self._head
        module = NO_MODULE
        offset = -1
        where = ""
        reasons: tuple[str, ...] = (err.reason,)
        if isinstance(err, TargetRejected) and head is not None:
            module = err.module
            method = head.method
            offset = err.report.violations[0].offset
            where = "target"
            line = mask.request_line(method, err.target, head.version)
            text = mask.excerpt(line, offset + len(method) + 1)
            reasons = err.report.reasons
        elif raw is not None and self._message_at_start and head is None:
            # The message began at raw[0]: locate the byte llhttp refused and show around it.
            method = raw.lstrip(b"\r\n").split(b" ", 1)[0]
            offset = locate_parse_error(raw)
            where = "message" if offset >= 0 else ""
            text = mask.excerpt(raw, offset)
        elif head is not None:
            method = head.method
            text = self._head_excerpt(head, err)
        else:
            method = b"-"
            text = "... " + mask.excerpt(self._url) if self._url else ""
        self._fe.captures.record(
            err.reason,
            module,
            Sample(
                time=time.time(),
                client=self._client_text(),
                method=mask.method_text(method),
                action=REJECTED,
                status=err.status,
                reasons=reasons,
                offset=offset,
                where=where,
                excerpt=text,
            ),
        )

    @staticmethod
    def _head_excerpt(head: RequestHead, err: BadRequest) -> str:
        """The request line, and the field at fault when the refusal names one (masked)."""
        data = mask.request_line(head.method, head.target, head.version) + b"\r\n"
        field = err.header.lower() if isinstance(err, HeadRejected) else b""
        if field:
            for name, value in head.headers:
                if name.lower() == field:
                    data += name + b": " + value + b"\r\n"
        return mask.excerpt(data)

    def _arm_rate_check(self, ex: Exchange) -> None:
        self._rate_paused = bool(self._pause)
        window = min(BODY_RATE_WINDOW, self._fe.timeouts.client)
        # The exchange and its body bytes so far ride on the timer handle, not on this object:
        # two fields fewer on every idle connection.
        self._rate_handle = self.loop.call_later(window, self._check_rate, ex, ex.req_body_bytes)

    def _check_rate(self, rated: Exchange, mark: int) -> None:
        """Once per window while a request body is read: refuse a client below BODY_MIN_RATE.
        `rated` is the exchange whose body was being read when the window began, with `mark`
        of its body bytes read by then."""
        self._rate_handle = None
        ex = self._parsing
        if ex is None or self._closing:
            return
        # Only windows that start with body bytes already flowing are judged: before that the
        # client may rightly wait for a `100 Continue` (a silent one meets timeouts.client).
        if ex is rated and mark and not self._rate_paused and not self._pause:
            window = min(BODY_RATE_WINDOW, self._fe.timeouts.client)
            if ex.req_body_bytes - mark < BODY_MIN_RATE * window:
                self._raw_left = 0
                self._bad_request(BadRequest("body-too-slow", status=408))
                return
        self._arm_rate_check(ex)

    def on_deadline(self) -> None:
        phase = self._phase
        if phase == HEADERS:
            if self._url or self._headers:
                # Slowloris: a head that never completes gets 408 (HAProxy's `timeout
                # http-request`); a connection that never sent a byte is closed silently.
                self._bad_request(RequestTimeout("request-timeout"))
            else:
                self._close()
        elif phase == BODY and self._active is not None and not self._active.resp_started:
            self._pause_reading(PAUSE_ERROR)
            ex = self._active
            self._parsing = None
            ex.req_done = True
            ex.term = "cR"
            ex.reply_local(408, wire.error_response(408))
        elif phase == IDLE:
            keep_alive = self._fe.timeouts.keep_alive
            if self._parser is not None and keep_alive > IDLE_TRIM_AFTER:
                # First stage of the keep-alive wait (see IDLE_TRIM_AFTER); the rest follows.
                # The last request's bytes, target and headers go too (a browser's are ~1 KB).
                self._parser = None
                self._data = self._url_chunk = self._url = b""
                self._headers = NO_HEADERS
                self._head = None
                self.deadline.set(keep_alive - IDLE_TRIM_AFTER)
            else:
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


# Client addresses as bytes, shared: a workstation's browser holds several connections, and
# each kept its own copy (42 bytes for an IPv4 address). Bounded: emptied when it is full.
_PEER_IPS: Final[dict[str, bytes]] = {}
_PEER_IPS_MAX: Final = 4096


def peer_ip_bytes(ip: str) -> bytes:
    found = _PEER_IPS.get(ip)
    if found is None:
        if len(_PEER_IPS) >= _PEER_IPS_MAX:
            _PEER_IPS.clear()
        found = _PEER_IPS[ip] = ip.encode()
    return found


class OpenConnections:
    """The worker's open client connections, for a graceful stop to walk. An intrusive doubly
    linked list (each connection carries its two neighbours) rather than a set: a set's table
    grows fourfold at a time and cost ~105 bytes per connection at 5,000 held."""

    __slots__ = ("_count", "_first")

    def __init__(self) -> None:
        self._first: ClientConnection | None = None
        self._count = 0

    def _holds(self, conn: ClientConnection) -> bool:
        # Listed: the first, or linked from a previous one (no flag: 8 bytes per connection).
        return conn.prev_open is not None or self._first is conn

    def add(self, conn: ClientConnection) -> None:
        if self._holds(conn):
            return
        first = self._first
        conn.prev_open = None
        conn.next_open = first
        if first is not None:
            first.prev_open = conn
        self._first = conn
        self._count += 1

    def discard(self, conn: ClientConnection) -> None:
        if not self._holds(conn):
            return
        prev, nxt = conn.prev_open, conn.next_open
        if prev is None:
            self._first = nxt
        else:
            prev.next_open = nxt
        if nxt is not None:
            nxt.prev_open = prev
        conn.prev_open = conn.next_open = None
        self._count -= 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[ClientConnection]:
        """Over a snapshot: connections may close while the caller walks them."""
        walked: list[ClientConnection] = []
        conn = self._first
        while conn is not None:
            walked.append(conn)
            conn = conn.next_open
        return iter(walked)


class Listener(Protocol):
    """What ConnectionFactory reads of the worker's Listener (lbd/process/worker.py). Not
    imported from there: the compiled build would then type-check the whole worker and what it
    imports (YAML, aiohttp, prometheus-client) without those packages in its build env."""

    frontend_name: str
    server: asyncio.AbstractServer | None


class ConnectionFactory:
    """A listener's protocol factory, compiled: uvloop calls it once per accepted connection
    (a Python closure here cost an interpreted frame per connection). The listener's frontend
    may change on reload and its server is set after the factory is made, so both are read
    at each call."""

    __slots__ = ("holder", "listener", "registry")

    def __init__(
        self, holder: RuntimeHolder, listener: Listener, registry: OpenConnections
    ) -> None:
        self.holder = holder
        self.listener = listener
        self.registry = registry

    def __call__(self) -> ClientConnection:
        listener = self.listener
        name = listener.frontend_name
        fe = self.holder.runtime.frontends.get(name)
        proto = b"https" if fe is not None and fe.tls is not None else b"http"  # X-F-Proto
        conn = ClientConnection(self.holder, name, proto)
        conn.registry = self.registry
        server = listener.server
        conn.accept_switch = server if isinstance(server, PausableServer) else None
        return conn
