"""One keep-alive TCP connection to a server, with its httptools response parser.

Rules: the parser callbacks only collect; the response head goes to the owning Exchange at
headers-complete, as the raw bytes the server sent (llhttp validates it without a Python call
per header: this class has no `on_header`, and httptools then registers none). A connection
belongs to at most one Exchange at a time and goes back to its pool only after the response was
read completely and the request was sent completely. Bytes produced while parsing one read are
handed over in one batch (`exchange.flush_client()`), so a keep-alive response costs one read
here and one write on the client leg.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

import httptools

from lbd.proxy.timer import Deadline

# A response head larger than this is refused with 502 (HAProxy's limit is its 16 KiB buffer).
MAX_HEAD_BYTES: Final = 64 * 1024

if TYPE_CHECKING:
    from lbd.proxy.connpool import ConnPool
    from lbd.proxy.exchange import Exchange


class UpstreamConnection(asyncio.Protocol):
    # --- connection lifetime
    __slots__ = (
        "_body_seen",
        "_buf",
        "_carry",
        "_head_from",
        "_in_head",
        "_parser",
        "_raw_left",
        "_unasked",
        "closed",
        "deadline",
        "exchange",
        "loop",
        "pool",
        "reused",
        "transport",
        "tunnel",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ConnPool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # None once closed: it holds bound methods of this object (see connection_lost)
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.deadline = Deadline(loop, self)
        self.closed = False
        self.reused = False  # has served a response already (an idle close race is possible)
        self.tunnel = False  # after a 101: raw bytes both ways
        # --- per response
        self.exchange: Exchange | None = None
        self._buf = b""  # what the parser is reading: the carried head start + this read
        self._head_from = 0  # where the head being parsed starts in _buf
        self._in_head = False  # llhttp began a message whose head is not complete
        self._carry = b""  # the start of a head split across reads
        self._unasked = False  # a message began with no exchange: the server spoke unasked
        self._body_seen = 0  # body bytes httptools delivered for this response
        self._raw_left = 0  # Content-Length bytes still to relay without the parser

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # A server may not speak unasked; an idle connection that does is unusable.
            self.close()
            return
        if self.tunnel:
            ex.tunnel_to_client(data)
            return
        if self._raw_left:
            self._relay_raw(ex, data)
            return
        carry = self._carry
        if carry:
            self._carry = b""
            self._buf = carry + data
        else:
            self._buf = data
        self._head_from = 0
        parser = self._parser
        if parser is None:  # closed: nothing more is read
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            if ex.upgrade_accepted():
                self.tunnel = True
                ex.flush_client()
                if offset < len(data):
                    ex.tunnel_to_client(data[offset:])
                return
            ex.upstream_failed(self, "bad-response", 502)
            return
        except httptools.HttpParserError:
            ex.upstream_failed(self, "bad-response", 502)
            return
        if self._unasked:
            # Bytes beyond the response (after a HEAD answer, or past its end): nobody asked
            # for them, and the next client must not get them. Never reuse this connection.
            self._unasked = self._in_head = False
            self._carry = self._buf = b""
            ex.flush_client()
            self.close()
            return
        if self._in_head:
            carry = self._buf[self._head_from :]
            if len(carry) > MAX_HEAD_BYTES:
                ex.upstream_failed(self, "bad-response", 502)
                return
            self._carry = carry
        self._buf = b""
        if self.exchange is ex and ex.resp_length > self._body_seen and not ex.resp_done:
            # A large Content-Length body is still coming: relay the next reads as they are,
            # without httptools copying every chunk through on_body (the 1 MiB case).
            self._raw_left = ex.resp_length - self._body_seen
        ex.flush_client()

    def _relay_raw(self, ex: Exchange, data: bytes) -> None:
        left = self._raw_left
        n = len(data)
        if n < left:
            self._raw_left = left - n
            ex.response_body(data)
            ex.flush_client()
            return
        if n > left:
            # More than the server announced: finish the response, never reuse the connection.
            ex.upstream_keep_alive = False
            data = data[:left]
        self._raw_left = 0
        # httptools still waits for those body bytes: the next response needs a fresh parser.
        self._parser = httptools.HttpResponseParser(self)
        ex.response_body(data)
        ex.response_complete()

    def eof_received(self) -> bool | None:
        return None  # let asyncio close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser and the deadline hold bound methods of this object: let go of both, so
        # the connection is freed now by reference counting rather than by the cyclic GC.
        self.deadline.release()
        self._parser = None
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_closed(self)
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for_upstream()

    # httptools callbacks -----------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._body_seen = 0
        if self.exchange is None:
            self._unasked = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        buf = self._buf
        start = self._head_from
        n = len(buf)
        while start < n and (buf[start] == 13 or buf[start] == 10):
            start += 1  # llhttp skips any CR and LF before a message
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            # llhttp took a head that does not end in CRLF CRLF (bare LF line ends): refuse it.
            raise ValueError("response head without CRLF line ends")
        end += 4
        if end - start > MAX_HEAD_BYTES:
            raise ValueError("response head too large")  # feed_data raises; upstream_failed
        self._head_from = end
        ex = self.exchange
        if ex is not None:
            p = self._parser
            assert p is not None  # its own callback
            ex.response_head(p.get_status_code(), buf[start:end], p.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        ex = self.exchange
        if ex is not None:
            ex.response_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.response_complete()

    # ----------------------------------------------------------------------------------------

    def attach(self, exchange: Exchange, timeout: float) -> None:
        self.exchange = exchange
        self.deadline.set(timeout)

    def reset_parser(self) -> None:
        """Start over with a fresh parser (after a response to HEAD, which llhttp can't know)."""
        self._parser = httptools.HttpResponseParser(self)
        self._in_head = False
        self._carry = b""

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def usable(self) -> bool:
        """Open, and not closing: the server may have closed it since it was made or pooled."""
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline.cancel()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.abort()

    def on_deadline(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.upstream_timeout(self)
        else:
            self.close()
