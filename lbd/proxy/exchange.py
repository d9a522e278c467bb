"""One request and its response: route → pick server → connection → relay → count.

Rules:
- The Runtime snapshot is captured once, by the client connection, when the request starts.
- Request bytes for the server collect in `req_out` and leave in one write per client read
  (`flush_upstream`); response bytes likewise in `resp_out` (`flush_client`).
- A request is retried only while `replay` still holds every byte sent (bounded) and either
  nothing reached the server (connect failure) or the method is idempotent. A POST is never
  resent once any of its bytes reached a server.
- Once the response head went to the client, a failure closes the client connection: never a
  second status line.
- Errors map to a status by their source: connect failure → retry, then 503; server timeout →
  504; bad response → 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from lbd.health import passive
from lbd.http import wire
from lbd.http.head import RequestHead
from lbd.http.response_head import (
    KEPT_TOKENS,
    NO_LENGTH,
    end_to_end,
    has_header,
    header_list,
    raw_head,
)
from lbd.routing.router import LocalAnswer
from lbd.stats.counters import TrafficCounters, bucket_of, status_class

if TYPE_CHECKING:
    from lbd.proxy.client import ClientConnection
    from lbd.proxy.upstream import UpstreamConnection
    from lbd.runtime import BackendRuntime, FrontendRuntime, Runtime
    from lbd.state import ServerState
    from lbd.sticky.policy import Persist

log = logging.getLogger("lbd.proxy")

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_LIMIT: Final = 64 * 1024  # request bytes kept for a retry; beyond this a failure is final
CONNECT_BUFFER_LIMIT: Final = 256 * 1024  # request body buffered while connecting before pausing

# Request headers never forwarded: hop-by-hop ones, and those lbd rewrites itself.
DROP_REQUEST: Final = wire.HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_RETRY_STATUSES: Final = frozenset({502, 503, 504})


def request_head_bytes(
    head: RequestHead,
    client_ip: bytes,
    proto: bytes,
    default_host: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The head sent to the server: hop-by-hop headers removed, X-Forwarded-* set. The server
    leg is always HTTP/1.1, which requires Host (RFC 9112 §3.2): an HTTP/1.0 request without one
    gets `default_host` (the backend's name, as nginx sends its upstream's name). `headers`
    replaces the client's when persistence removed or unprefixed its cookie. A head with
    nothing to drop or rewrite goes as the client sent it (`head.raw`), header values and
    spacing unchanged, as HAProxy forwards them."""
    xff = head.xff + b", " + client_ip if head.xff else client_ip
    raw = head.raw
    host = head.host
    if raw is not None and host is not None and headers is None:
        # The common case: the client's own bytes (nothing to drop), then lbd's lines.
        return b"".join(
            (raw, b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto,
             b"\r\nX-Forwarded-Host: ", host, b"\r\n\r\n")
        )  # fmt: skip
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    if host is None:
        parts += (b"Host: ", default_host, b"\r\n")
    drop: frozenset[bytes] | None = None
    if head.needs_filter:
        extra = head.connection_tokens - KEPT_TOKENS
        drop = DROP_REQUEST | extra if extra else DROP_REQUEST
    for name, value in head.headers if headers is None else headers:
        if drop is None or name.lower() not in drop:
            parts += (name, b": ", value, b"\r\n")
    parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if host is not None:
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Exchange:
    __slots__ = (
        "attached_at",
        "backend",
        "client",
        "client_close",
        "connect_time",
        "connecting",
        "dispatched_at",
        "done",
        "fe",
        "hash_key",
        "head",
        "headers_at",
        "module",
        "persist",
        "queue_timer",
        "queue_wait",
        "queued_at",
        "rechunk",
        "replay",
        "replay_bytes",
        "req_body_bytes",
        "req_done",
        "req_out",
        "resp_bytes",
        "resp_done",
        "resp_length",
        "resp_out",
        "resp_started",
        "response_at",
        "retries",
        "retries_left",
        "runtime",
        "server",
        "started",
        "started_at",
        "status",
        "term",
        "tunnel_pending",
        "until_close",
        "upstream",
        "upstream_keep_alive",
    )

    def __init__(
        self,
        client: ClientConnection,
        head: RequestHead,
        runtime: Runtime,
        fe: FrontendRuntime,
        started_at: float,
    ) -> None:
        # --- fixed for the request's lifetime (the snapshot is never re-read)
        self.client = client
        self.head = head
        self.runtime = runtime
        self.fe = fe
        self.started_at = started_at
        self.headers_at = client.loop.time()  # created at headers-complete (HAProxy's TR end)
        self.module = "other"
        self.backend: BackendRuntime | None = None
        # --- server leg
        self.server: ServerState | None = None
        self.upstream: UpstreamConnection | None = None
        self.connecting = False
        self.retries_left = 0
        self.hash_key: bytes | None = None  # extracted once; retries reuse it
        self.persist: Persist | None = None  # cookie / stick-table facts, sticky backends only
        self.dispatched_at = 0.0
        self.queue_timer: asyncio.TimerHandle | None = None  # waiting for a server slot
        self.queued_at = 0.0
        self.queue_wait = 0.0  # seconds spent in the backend queue (HAProxy's Tw)
        # --- request body, client → server
        self.req_out: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.req_body_bytes = 0
        self.req_done = False
        # --- response, server → client
        self.resp_out: list[bytes] = []
        self.status = 0  # final status; 0 until a final response head arrived
        self.resp_started = False  # a final response head was queued for the client
        self.resp_done = False
        self.resp_bytes = 0
        self.resp_length = -1  # the response's Content-Length, when it has one
        self.rechunk = False  # the client gets a chunked body we encode
        self.until_close = False  # the server delimits the body by closing
        self.upstream_keep_alive = True
        self.client_close = not head.keep_alive
        self.tunnel_pending: list[bytes] | None = None
        self.done = False
        self.started = False  # start() ran: current-request gauges were raised
        # --- for the access log (HAProxy's timers and termination state)
        self.attached_at = 0.0  # the request started going to a server (after connect)
        self.connect_time = -1.0  # seconds to connect; 0 for a pooled connection; -1 never
        self.response_at = 0.0  # the final response head arrived
        self.retries = 0
        # Two letters as in HAProxy's logs: who ended the session (C client, S server, P proxy,
        # c/s client/server timeout, - normal) and in which phase (R request, C connect,
        # H response headers, D data, - normal).
        self.term = "--"
        fe.counters.requests += 1

    # --- start -----------

    def start(self) -> None:
        """Route the request and send it on its way (called when it is the client's turn)."""
        fe = self.fe
        client = self.client
        head = self.head
        router = fe.router
        src = client.peer_ip_object() if router.needs_src else None
        self.module = router.module(head, src)
        self.started = True
        _enter(fe.counters)
        mc = fe.module_counters[self.module]
        mc.requests += 1
        _enter(mc)
        target = router.route(head, src)
        if isinstance(target, LocalAnswer):
            if target.denied:
                fe.counters.denied += 1
            self.term = "PR" if target.denied else "LR"  # blocked / answered locally
            self.reply_local(target.status, target.response)
            return
        backend = self.runtime.backends[target]
        self.backend = backend
        backend.counters.requests += 1
        _enter(backend.counters)
        self.retries_left = backend.config.retries
        if backend.key_of is not None:
            self.hash_key = backend.key_of(head, client.peer_ip)
        forward = None
        if backend.sticky is not None:
            p = self.persist = backend.sticky.request(
                head.headers, client.peer_ip, int(time.time()), client.loop.time()
            )
            forward = p.headers
        data = request_head_bytes(head, client.peer_ip, client.proto, backend.host_header, forward)
        # Body bytes of a pipelined request may already wait here: the head goes first.
        self.req_out.insert(0, data)
        if self.replay is not None:
            self.replay.insert(0, data)
            self.replay_bytes += len(data)
            if self.replay_bytes > REPLAY_LIMIT:
                self.replay = None
        self._dispatch(None)

    def _dispatch(self, avoid: ServerState | None) -> None:
        backend = self.backend
        assert backend is not None
        persist = self.persist
        if persist is not None and persist.target is not None:
            target = persist.target
            # Re-checked here because a queued request may find its server DOWN or in MAINT.
            if avoid is None and target.up and target.admin != "maint":
                self._dispatch_persistent(backend, target)
                return
            persist.redispatched()  # never back to a server that failed or went away
        server, all_full = backend.pick_with_room(self.hash_key, avoid)
        if server is None and all_full:
            self._enter_queue(backend)
            return
        if server is None:
            backend.counters.no_server += 1
            self.term = "SC"
            self.reply_local(503, wire.error_response(503))
            return
        if avoid is not None and server is not avoid:
            backend.counters.redispatches += 1
        self._send_to(backend, server)

    def _dispatch_persistent(self, backend: BackendRuntime, server: ServerState) -> None:
        """The request names `server` (cookie or stick table), which is not DOWN or MAINT: it
        goes there even in DRAIN, at weight 0 or as a backup. At its maxconn, it waits in the
        backend queue for a slot rather than lose its session."""
        if not server.has_room():
            self._enter_queue(backend)
            return
        self._send_to(backend, server)

    def _send_to(self, backend: BackendRuntime, server: ServerState) -> None:
        self.server = server
        self.dispatched_at = self.client.loop.time()
        server.inflight += 1
        sc = server.counters
        sc.requests += 1
        sc.cur_requests += 1
        if sc.cur_requests > sc.max_requests:
            sc.max_requests = sc.cur_requests
        if not server.config.backup:
            # The balancer knows active servers only; a backup (picked when no active is
            # usable, or named by persistence) must not enter its structures.
            backend.balancer.request_started(server)
        conn = server.pool.acquire()
        if conn is not None:
            self._attach(conn)
        else:
            self.connecting = True
            asyncio.get_running_loop().create_task(self._connect(server))

    def _enter_queue(self, backend: BackendRuntime) -> None:
        """Every usable server is at its maxconn: wait, oldest first, up to timeouts.queue."""
        bc = backend.counters
        if backend.queue_limit and len(backend.queue) >= backend.queue_limit:
            self.term = "sQ"
            self.reply_local(503, wire.error_response(503))
            return
        backend.queue.append(self)
        bc.queue_cur += 1
        if bc.queue_cur > bc.queue_max:
            bc.queue_max = bc.queue_cur
        loop = self.client.loop
        self.queued_at = loop.time()
        self.queue_timer = loop.call_later(backend.config.timeouts.queue, self._queue_timeout)

    def waits_for_its_server(self) -> bool:
        """Queued for the server its session names, which is still full (and still reachable):
        a slot freed elsewhere is not for this request, which keeps its place and its timer."""
        p = self.persist
        if p is None or p.target is None or self.done:
            return False
        t = p.target
        return t.up and t.admin != "maint" and not t.has_room()

    def leave_queue(self) -> bool:
        """Called by the backend when a slot frees; False if this request is gone already."""
        timer = self.queue_timer
        if timer is not None:
            timer.cancel()
            self.queue_timer = None
        if self.done:
            return False
        waited = self.client.loop.time() - self.queued_at
        self.queue_wait += waited
        self._observe_queue(waited)
        self._dispatch(None)
        return True

    def _queue_timeout(self) -> None:
        self.queue_timer = None
        backend = self.backend
        if backend is None or self.done:
            return
        try:
            backend.queue.remove(self)
        except ValueError:
            return
        backend.counters.queue_cur -= 1
        backend.counters.queue_timeouts += 1
        waited = self.client.loop.time() - self.queued_at
        self.queue_wait += waited
        self._observe_queue(waited)
        self.term = "sQ"
        self.reply_local(503, wire.error_response(503))

    def _counter_set(self, server: ServerState | None) -> tuple[TrafficCounters, ...]:
        """The counters a server-side timing (connect, queue, response head) belongs to:
        module, backend, server. The module × server pair only counts requests, responses,
        bytes and total time (what "served by" shows), in _account."""
        mc = self.fe.module_counters[self.module]
        backend = self.backend
        if backend is None:
            return (mc,)
        if server is None:
            return (mc, backend.counters)
        return (mc, backend.counters, server.counters)

    def _module_server(self, server: ServerState) -> TrafficCounters:
        """Counters of this request's module on this server, created on first use. Bounded:
        modules and servers both come from the configuration."""
        key = (self.module, server.backend_name, server.name)
        table = self.fe.module_servers
        c = table.get(key)
        if c is None:
            c = table[key] = TrafficCounters()
        return c

    def _observe_queue(self, waited: float) -> None:
        bucket = bucket_of(waited)
        for c in self._counter_set(None):
            c.queue_time.observe_at(bucket, waited)

    async def _connect(self, server: ServerState) -> None:
        backend = self.backend
        assert backend is not None
        t0 = self.client.loop.time()
        try:
            conn = await server.pool.connect(backend.config.timeouts.connect)
        except (OSError, TimeoutError) as exc:
            self.connecting = False
            if self.done:
                return
            reason = "connect timeout" if isinstance(exc, TimeoutError) else str(exc)
            self._connect_failed(server, reason)
            return
        self.connecting = False
        if not self.done and not conn.usable():
            # The server closed it already: uvloop resumes this coroutine a few loop turns after
            # connection_made, and a server shedding connections can close in between. A failed
            # connect, not a connection (its connection_lost, if still to come, forgets it).
            self._connect_failed(server, "closed by the server at once")
            return
        server.counters.connections += 1
        self.connect_time = seconds = self.client.loop.time() - t0
        bucket = bucket_of(seconds)
        for c in self._counter_set(server):
            c.connect_time.observe_at(bucket, seconds)
        if self.done:
            server.pool.release(conn)  # the client left meanwhile; the fresh connection is fine
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        assert self.backend is not None
        self.upstream = conn
        if self.connect_time < 0:
            self.connect_time = 0.0
        self.attached_at = self.client.loop.time()
        conn.attach(self, self.backend.config.timeouts.server)
        if self.tunnel_pending is None and self.head.upgrade is not None:
            self.tunnel_pending = []
        self.flush_upstream()
        self.client.resume_reading_for_connect()

    def _release_server(self) -> None:
        """The server's part is over (answered, failed, or left for a retry): every path comes
        here, so the balancer always hears `request_finished` exactly once per dispatch."""
        server = self.server
        if server is not None:
            self.server = None
            server.inflight -= 1
            server.counters.cur_requests -= 1
            backend = self.backend
            if backend is not None:
                if not server.config.backup:
                    done_at = self.response_at or self.client.loop.time()
                    backend.balancer.request_finished(server, done_at - self.dispatched_at)
                if backend.queue:
                    backend.wake_one()

    def _connect_failed(self, server: ServerState, reason: str) -> None:
        backend = self.backend
        assert backend is not None
        passive.connect_failed(server, reason)
        server.counters.conn_errors += 1
        backend.counters.conn_errors += 1
        log.debug("connect to %s/%s failed: %s", backend.name, server.name, reason)
        if self.retries_left > 0:
            self._release_server()
            self.retries_left -= 1
            self.retries += 1
            backend.counters.retries += 1
            server.counters.retries += 1
            self._dispatch(server if backend.config.redispatch else None)
            return
        self.term = "SC"
        self.reply_local(503, wire.error_response(503))

    # --- request body, from the client connection -------------------------------------------------

    def request_body(self, data: bytes) -> None:
        n = len(data)
        self.req_body_bytes += n
        piece = wire.chunk(data) if self.head.chunked else data
        self.req_out.append(piece)
        if self.replay is not None:
            self._remember(piece)
        if self.upstream is None and not self.done:
            if sum(len(p) for p in self.req_out) > CONNECT_BUFFER_LIMIT:
                self.client.pause_reading_for_connect()

    def request_complete(self) -> None:
        if self.head.chunked:
            self.req_out.append(wire.CHUNK_END)
            if self.replay is not None:
                self._remember(wire.CHUNK_END)
        self.req_done = True
        if self.resp_done and not self.done:
            self._finish()

    def _remember(self, piece: bytes) -> None:
        assert self.replay is not None
        self.replay_bytes += len(piece)
        if self.replay_bytes > REPLAY_LIMIT:
            self.replay = None
        else:
            self.replay.append(piece)

    def flush_upstream(self) -> None:
        conn = self.upstream
        out = self.req_out
        if conn is not None and out:
            conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # --- response, from the upstream connection ---------------------------------------------------

    def response_head(self, status: int, raw: bytes, keep: bool) -> None:
        """The server's head, as received (status line first, ending in CRLF CRLF)."""
        if status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): pass it on to 1.1 clients only.
            if self.head.version == b"1.1":
                self.resp_out += (wire.status_line(status), end_to_end(raw)[0], b"\r\n")
            return
        server = self.server
        if server is not None and server.observer is not None:  # skip a Python call if not
            passive.response(server, status)
        if status in _RETRY_STATUSES and self._may_resend(str(status)):
            # `retry_on: [502, 503, 504]`: drop this answer and its connection, try again.
            conn = self.upstream
            if conn is not None:
                self.upstream = None
                conn.exchange = None
                conn.abort()
            self._count_response_error()
            self._resend(counted=True)
            return
        self.status = status
        self.resp_started = True
        self.response_at = now = self.client.loop.time()
        self.upstream_keep_alive = keep
        waited = now - self.attached_at
        bucket = bucket_of(waited)
        backend = self.backend
        self.fe.module_counters[self.module].header_time.observe_at(bucket, waited)
        if backend is not None:
            backend.counters.header_time.observe_at(bucket, waited)
            if server is not None:
                server.counters.header_time.observe_at(bucket, waited)
        head = self.head
        extra_lines = b""
        if self.persist is not None and backend is not None and backend.sticky is not None:
            if server is not None:  # persistence cookie / stick table learn from the answer
                headers = header_list(raw)
                edited, extra_lines = backend.sticky.response(
                    self.persist, server, headers, int(time.time()), now
                )
                if edited is not headers:
                    raw = raw_head(wire.status_line(status), edited)
        lines, length, chunked = end_to_end(raw)
        if length != NO_LENGTH:
            self.resp_length = length
        no_body = head.method == b"HEAD" or status in (204, 304) or status == 101
        client_11 = head.version == b"1.1"
        if not no_body and length == NO_LENGTH:
            if not chunked:
                self.until_close = True
                self.upstream_keep_alive = False
            if client_11:
                self.rechunk = True
                extra_lines += b"Transfer-Encoding: chunked\r\n"
            else:
                self.client_close = True
        if head.upgrade is not None and status != 101:
            # The parser stopped at the upgrade request; only a fresh connection is in sync.
            self.client_close = True
        if status == 101:
            extra_lines += b"Connection: Upgrade\r\nUpgrade: " + (head.upgrade or b"") + b"\r\n"
        elif self.client_close or not self.req_done:
            # Not finished reading the request: close after answering rather than drain it.
            self.client_close = True
            extra_lines += b"Connection: close\r\n"
        elif not client_11:
            extra_lines += b"Connection: keep-alive\r\n"
        hsts = self.fe.hsts  # `tls: {hsts: ...}`: unless the server already set its own
        if hsts and not has_header(raw, b"strict-transport-security"):
            extra_lines += hsts
        data = b"".join((wire.status_line(status), lines, extra_lines, b"\r\n"))
        self.resp_bytes += len(data)  # HAProxy's bytes_read and bout count the head too
        self.resp_out.append(data)
        if no_body and status != 101:
            if head.method == b"HEAD" and self.upstream is not None:
                # llhttp does not know the request was HEAD and would wait for a body.
                self.upstream.reset_parser()
            self.response_complete()

    def response_body(self, data: bytes) -> None:
        if self.status == 0 or self.resp_done:
            return
        self.resp_bytes += len(data)
        self.resp_out.append(wire.chunk(data) if self.rechunk else data)

    def response_complete(self) -> None:
        if self.status == 0 or self.resp_done or self.status == 101:
            # End of an interim response; or of a 101, which llhttp reports as complete just
            # before it raises HttpParserUpgrade: the tunnel starts in upgrade_accepted().
            return
        if self.rechunk:
            self.resp_out.append(wire.CHUNK_END)
        self.resp_done = True
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.deadline.clear()
            if self.upstream_keep_alive and self.req_done and not self.until_close:
                conn.pool.release(conn)
            else:
                conn.exchange = None
                conn.close()
        self.flush_client()
        self._finish()

    def flush_client(self) -> None:
        out = self.resp_out
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # --- upgrade tunnel -----------

    def upgrade_accepted(self) -> bool:
        if self.status != 101 or self.head.upgrade is None:
            return False
        self.flush_client()
        self.client.start_tunnel(self)
        pending, self.tunnel_pending = self.tunnel_pending or [], None
        for data in pending:
            self.tunnel_to_upstream(data)
        if self.upstream is not None:
            self.upstream.deadline.clear()
        return True

    def tunnel_to_client(self, data: bytes) -> None:
        self.resp_bytes += len(data)
        self.client.write(data)

    def tunnel_to_upstream(self, data: bytes) -> None:
        if self.tunnel_pending is not None:
            self.tunnel_pending.append(data)
            return
        if self.upstream is not None:
            self.req_body_bytes += len(data)
            self.upstream.write(data)

    # --- failures -----------

    def upstream_closed(self, conn: UpstreamConnection) -> None:
        """The server connection closed while this exchange owned it."""
        if self.upstream is not conn or self.done:
            return
        self.upstream = None
        if conn.tunnel:
            self.resp_done = self.req_done = True
            self.client_close = True
            self._finish()
            return
        if self.until_close and self.resp_started:
            self.response_complete()
            return
        if not self.resp_started:
            self._retry_or_fail(conn, "empty-response", 502)
            return
        if self.server is not None:
            passive.broken(self.server, "server closed mid-response")
        self.term = "SD"
        self._abort_response("server closed mid-response")

    def upstream_failed(self, conn: UpstreamConnection, reason: str, status: int) -> None:
        """The server sent something unparseable."""
        if self._drop_failed(conn):
            return
        if self.server is not None:
            passive.broken(self.server, reason)
        self._server_error("S", reason, status)

    def upstream_timeout(self, conn: UpstreamConnection) -> None:
        """The server stayed silent for timeouts.server."""
        if self._drop_failed(conn):
            return
        if self.server is not None:
            passive.timeout(self.server)
        if not self.resp_started and self._may_resend("response-timeout"):
            self._count_response_error()
            self._resend(counted=True)
            return
        self._server_error("s", "server timeout", 504)

    def _drop_failed(self, conn: UpstreamConnection) -> bool:
        """Abort a failed server connection; True if this exchange has nothing left to do."""
        conn.exchange = None
        conn.abort()
        if self.upstream is conn:
            self.upstream = None
        return self.done

    def _server_error(self, who: str, reason: str, status: int) -> None:
        """Answer `status` if nothing went to the client yet, else close it (never a second
        status line). `who` is HAProxy's first termination letter: S error, s timeout."""
        self._count_response_error()
        if self.resp_started:
            self.term = who + "D"
            self._abort_response(reason)
        else:
            self.term = who + "H"
            self.reply_local(status, wire.error_response(status))

    def _retry_or_fail(self, conn: UpstreamConnection, reason: str, status: int) -> None:
        """The server closed without answering. A reused connection closed before answering is
        the idle-close race: an idempotent request is resent and it does not count as a server
        failure. Otherwise `retry_on: [empty-response]` decides, as in HAProxy."""
        race = conn.reused
        if not race and self.server is not None:
            passive.broken(self.server, "empty response")
        if self._may_resend("empty-response", race):
            self._resend(counted=not race)
            return
        self._count_response_error()
        self.term = "SH"
        self.reply_local(status, wire.error_response(status))

    def _may_resend(self, cause: str, free: bool = False) -> bool:
        """May this request be sent again? Only idempotent ones whose every byte is still held
        (`replay`), after the client finished sending, and while retries remain."""
        backend = self.backend
        if backend is None or self.replay is None or not self.req_done:
            return False
        if self.head.method not in IDEMPOTENT:
            return False
        return free or (self.retries_left > 0 and cause in backend.config.retry_on)

    def _resend(self, counted: bool) -> None:
        backend = self.backend
        server = self.server
        assert backend is not None and self.replay is not None
        if counted:
            self.retries += 1
            self.retries_left -= 1
            backend.counters.retries += 1
            if server is not None:
                server.counters.retries += 1
        self._release_server()
        self.req_out = list(self.replay)
        self._dispatch(server if counted and backend.config.redispatch else None)

    def _count_response_error(self) -> None:
        if self.server is not None:
            self.server.counters.response_errors += 1
        if self.backend is not None:
            self.backend.counters.response_errors += 1

    def _abort_response(self, reason: str) -> None:
        log.debug("aborting response to %s: %s", self.client.peer_ip.decode(), reason)
        self.client_close = True
        self.resp_out.clear()
        self.done = True
        self._account()
        self.client.abort_after(self)

    def client_lost(self) -> None:
        """The client went away before the exchange finished."""
        if self.done:
            return
        self.done = True
        if self.queue_timer is not None and self.backend is not None:
            self.queue_timer.cancel()
            self.queue_timer = None
            try:
                self.backend.queue.remove(self)
                self.backend.counters.queue_cur -= 1
            except ValueError:
                pass
        # The client left: before the head was complete (R), while we waited for the server
        # (H), or while the response was flowing (D).
        self.term = "CD" if self.resp_started else ("CH" if self.req_done else "CR")
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            conn.abort()
        self._account()

    # --- local answers and the end -----------

    def reply_local(self, status: int, data: bytes) -> None:
        """Answer from lbd itself (deny, redirect, errors), then close the client connection:
        the request may have a body lbd never read, which must not be taken for a request."""
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            conn.abort()
        self.status = status
        self.resp_started = True
        self.resp_done = True
        self.client_close = True  # every local answer closes: see http/wire.py
        if self.head.method == b"HEAD":
            data = data[: data.find(b"\r\n\r\n") + 4]
        self.resp_bytes += len(data)
        self.resp_out.append(data)
        self.flush_client()
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        if not self.req_done and not self.client_close:
            # The response is complete but the request body is still arriving: wait for it
            # (request_complete calls back) so the connection stays in sync.
            return
        self.done = True
        self._account()
        self.client.exchange_finished(self)

    def _account(self) -> None:
        """Count the finished (or aborted) exchange everywhere it belongs."""
        elapsed = self.client.loop.time() - self.started_at
        bucket = bucket_of(elapsed)
        cls = status_class(self.status)
        fe = self.fe
        fc = fe.counters
        mc = fe.module_counters[self.module]
        backend = self.backend
        if self.started:
            fc.cur_requests -= 1
            mc.cur_requests -= 1
            if backend is not None:
                backend.counters.cur_requests -= 1
        sent = self.req_body_bytes
        received = self.resp_bytes
        if self.persist is not None and backend is not None:
            self.persist.count(backend.counters)
        # Called out one by one: compiled, a loop over a tuple of counters goes through
        # Python's iterator protocol.
        _count_response(fc, cls, sent, received, bucket, elapsed)
        _count_response(mc, cls, sent, received, bucket, elapsed)
        if backend is not None:
            _count_response(backend.counters, cls, sent, received, bucket, elapsed)
        server = self.server
        if server is not None:
            pair = self._module_server(server)
            pair.requests += 1  # the server's own count was taken at dispatch
            _count_response(server.counters, cls, sent, received, bucket, elapsed)
            _count_response(pair, cls, sent, received, bucket, elapsed)
        log_sink = self.runtime.access_log
        if log_sink is not None:
            log_sink(self, elapsed)
        if server is not None:
            self._release_server()


def _count_response(
    c: TrafficCounters, cls: int, sent: int, received: int, bucket: int, elapsed: float
) -> None:
    c.responses[cls] += 1
    c.bytes_in += sent
    c.bytes_out += received
    c.response_time.observe_at(bucket, elapsed)


def _enter(c: TrafficCounters) -> None:
    """One more request in progress; remember the peak (HAProxy's scur/smax)."""
    cur = c.cur_requests + 1
    c.cur_requests = cur
    if cur > c.max_requests:
        c.max_requests = cur
