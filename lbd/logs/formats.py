"""Access-log lines: HAProxy's `httplog` layout, or one JSON object per line.

Rules:
- This runs on the event loop once per request: no strftime per line (the part of a date that
  changes once a second is cached), no regex unless a byte actually needs escaping, no header
  scan. A formatter never raises into the proxy: AccessLog catches and counts.
- Never logged: request or response bodies, header values (Cookie, Authorization…), query
  values. Patient identifiers travel in URLs, so a query keeps only parameter names that look
  like names (`?ipp=***&tab=***`); anything else in it becomes `***`.
- Both formats carry the same facts; only the spelling differs. Timers are milliseconds, -1 for
  a phase that never happened (as HAProxy logs them).

Timers (HAProxy's definitions, from the Exchange's loop-clock stamps; uvloop's clock ticks in
milliseconds and is read once per loop iteration, so every timer is good to a millisecond or so):
  TR  request head received: `headers_at − started_at` once the Exchange class records
      `headers_at` (checked once, when a formatter is built). Until then TR is approximated as
      `attached_at − connect_time − started_at` (exact for a first attempt on a pooled or fresh
      connection; with connect retries it includes the failed attempts), and as Ta for an answer
      that never reached a server (deny, redirect, no server: answered at headers-complete, so
      exact; an upper bound after failed connects).
  Tw  queue wait: 0 (no queue yet) once a backend was chosen, -1 otherwise.
  Tc  `connect_time`: -1 never connected, 0 for a pooled connection.
  Tr  server response head: `response_at − attached_at`, -1 without a response.
  Ta  total, first request byte to the end of the response (the `elapsed` the proxy passes).
"""

from __future__ import annotations

import json
import json.encoder
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange

# (exchange, elapsed seconds, wall-clock time now) → one line without its newline.
Formatter = Callable[["Exchange", float, float], str]

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Bytes logged as `#XX` (HAProxy's log escaping): controls, space, '"', '#', and non-ASCII, so
# a line always splits on spaces and the request field always ends at its closing quote.
_UNSAFE: Final = re.compile(rb'[\x00-\x20"#\x7f-\xff]')

# A query parameter name worth keeping: short, ASCII, at least one letter (`123456=x` is
# likely an identifier used as a name). Everything else is masked. mask_query reads the query
# once, byte by byte: nothing a client puts in it can make it backtrack.
MASK: Final = "***"
MAX_PARAMS: Final = 32  # parameters spelled out; the rest of a longer query becomes one `***`
MAX_NAME: Final = 64

# The same rules as byte tables, for the compiled loops below (a regular-expression call costs
# a few thousand instructions; these loops a few per byte). tests/test_logs.py holds both equal.
_UNSAFE_TABLE: Final = bytes(1 if _UNSAFE.match(bytes((c,))) else 0 for c in range(256))
_NAME_TABLE: Final = bytes(
    1 if re.fullmatch(rb"[\w.\-\[\]%]", bytes((c,))) else 0 for c in range(256)
)
_LETTER_TABLE: Final = bytes(1 if bytes((c,)).isalpha() else 0 for c in range(256))

# The usual methods and versions, decoded once (anything else goes through escape()).
_WORDS: Final = {w: w.decode() for w in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS",
                                   b"PATCH", b"1.1", b"1.0")}  # fmt: skip

_NOSRV: Final = "<NOSRV>"


# ".000" … ".999": a table lookup where a `:03d` format costs a format-spec parse per line.
_MILLIS: Final[tuple[str, ...]] = tuple(f".{ms:03d}" for ms in range(1000))


class DateCache:
    """Formats wall-clock times to the millisecond, computing the per-second part once.

    One instance per thread: it is a plain cache without a lock. Local time, as HAProxy logs."""

    __slots__ = ("_http", "_iso", "_offset", "_sec")

    def __init__(self) -> None:
        self._sec = -1
        self._http = ""
        self._iso = ""
        self._offset = ""

    def _fill(self, sec: int) -> None:
        tm = time.localtime(sec)
        self._sec = sec
        self._http = (
            f"{tm.tm_mday:02d}/{MONTHS[tm.tm_mon - 1]}/{tm.tm_year:04d}:"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        )
        self._iso = (
            f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        )
        off = tm.tm_gmtoff // 60
        sign = "+" if off >= 0 else "-"
        self._offset = f"{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"

    def httplog(self, t: float) -> str:
        """`06/Feb/2009:12:14:14.655`"""
        sec = int(t)
        if sec != self._sec:
            self._fill(sec)
        return self._http + _MILLIS[int((t - sec) * 1000)]

    def iso(self, t: float) -> str:
        """`2009-02-06T12:14:14.655+01:00` (RFC 3339, also RFC 5424's TIMESTAMP)."""
        sec = int(t)
        if sec != self._sec:
            self._fill(sec)
        return self._iso + _MILLIS[int((t - sec) * 1000)] + self._offset


def escape(raw: bytes) -> str:
    """Bytes as printable ASCII without spaces, quotes or '#' (`#XX` for each such byte)."""
    table = _UNSAFE_TABLE
    for i in range(len(raw)):
        if table[raw[i]]:
            raw = _UNSAFE.sub(lambda m: b"#%02X" % m[0][0], raw)
            break
    return raw.decode("ascii")


def mask_query(query: bytes) -> str:
    """`id=123&tab=bio&x` → `id=***&tab=***&***`: names kept when they look like names (1 to 64
    of letters, digits and `_.-[]%`, at least one letter), values never. Empty values stay
    empty (`a=` tells nothing). One pass over the bytes; at most MAX_PARAMS parameters are
    spelled out, the rest of a longer query becomes one `***`."""
    n = len(query)
    names = _NAME_TABLE
    letters = _LETTER_TABLE
    pieces: list[bytes] = []
    i = 0
    while True:
        if len(pieces) == MAX_PARAMS:
            pieces.append(b"***")
            break
        j = i
        eq = -1
        name_ok = True
        letter = False
        while j < n:
            c = query[j]
            if c == 38:  # '&'
                break
            if eq < 0:
                if c == 61:  # '='
                    eq = j
                elif not names[c]:
                    name_ok = False
                elif letters[c]:
                    letter = True
            j += 1
        if j == i:
            pieces.append(b"")
        elif eq > i and name_ok and letter and eq - i <= MAX_NAME:
            pieces.append(query[i : eq + 1] + b"***" if eq + 1 < j else query[i : eq + 1])
        else:
            pieces.append(b"***")
        if j >= n:
            break
        i = j + 1
    return b"&".join(pieces).decode("ascii")


def word(raw: bytes) -> str:
    """A method or an HTTP version."""
    return _WORDS.get(raw) or escape(raw)


def logged_path(ex: Exchange) -> str:
    """The request path, escaped, with its query masked."""
    head = ex.head
    path = escape(head.path)
    if head.query:
        return f"{path}?{mask_query(head.query)}"
    # A bare '?' (empty query) is kept: it is what the client sent.
    return path + "?" if head.target.endswith(b"?") else path


def stamps_headers_complete() -> bool:
    """Does the Exchange record when its head was complete (`headers_at`)? Asked once, when a
    formatter is built (importing the proxy here, not at load time, avoids an import cycle)."""
    from lbd.proxy.exchange import Exchange

    return hasattr(Exchange, "headers_at")


def timers(ex: Exchange, elapsed: float, exact_tr: bool) -> tuple[int, int, int, int, int]:
    """(TR, Tw, Tc, Tr, Ta) in ms; see the module docstring for what each measures."""
    ta = max(int(elapsed * 1000), 0)
    attached = ex.attached_at
    headers_at: float = ex.headers_at if exact_tr else 0.0
    if attached:
        connect = ex.connect_time
        tc = int(connect * 1000) if connect >= 0 else -1
        tr_server = max(int((ex.response_at - attached) * 1000), 0) if ex.response_at else -1
        if not headers_at:
            headers_at = attached - max(connect, 0.0)
    else:
        tc = tr_server = -1
    tr = max(int((headers_at - ex.started_at) * 1000), 0) if headers_at else ta
    tw = int(ex.queue_wait * 1000) if ex.backend is not None else -1
    return tr, tw, tc, tr_server, ta


def _backend_queue(ex: Exchange) -> int:
    return ex.backend.counters.queue_cur if ex.backend is not None else 0


def connection_counts(ex: Exchange) -> tuple[int, int, int, int]:
    """HAProxy's actconn/feconn/beconn/srv_conn when the line is written, this request included:
    client connections open on all frontends, on this one; requests in progress on the backend
    (which already counted this one out), on the server (which has not yet)."""
    fe_conn = ex.fe.counters.conn_cur
    act = 0
    for fe in ex.runtime.frontends.values():
        act += fe.counters.conn_cur
    backend = ex.backend
    be = backend.counters.cur_requests + (1 if ex.started else 0) if backend is not None else 0
    server = ex.server
    srv = server.counters.cur_requests if server is not None else 0
    return act, fe_conn, be, srv


def cookie_flags(ex: Exchange) -> str:
    """The 3rd and 4th letters of the termination state: HAProxy's persistence cookie flags
    (client side N/I/D/V/E/O, server side N/I/U/P/R/D; see lbd/sticky/cookie.py), `--`
    when the backend has no persistence cookie."""
    p = ex.persist
    return p.flags if p is not None else "--"


class HttpLog:
    """HAProxy's `option httplog` layout, the captured-header block replaced by `{module}`:

    client_ip:port [accept_date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes_read
    captured_request_cookie captured_response_cookie termination_state
    actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue {module} "METHOD path HTTP/x.y"

    Without a backend (deny, redirect), the frontend's name stands in for it, as in HAProxy."""

    __slots__ = ("_dates", "_exact_tr")

    def __init__(self, exact_tr: bool | None = None) -> None:
        self._dates = DateCache()
        self._exact_tr = stamps_headers_complete() if exact_tr is None else exact_tr

    def __call__(self, ex: Exchange, elapsed: float, now: float) -> str:
        client = ex.client
        fe = ex.fe.name
        backend = ex.backend.name if ex.backend is not None else fe
        server = ex.server.name if ex.server is not None else _NOSRV
        tr, tw, tc, tr_server, ta = timers(ex, elapsed, self._exact_tr)
        act, fe_conn, be_conn, srv_conn = connection_counts(ex)
        head = ex.head
        return (
            f"{client.peer_ip.decode('ascii', 'replace')}:{client.peer_port} "
            f"[{self._dates.httplog(now - elapsed)}] {fe} {backend}/{server} "
            f"{tr}/{tw}/{tc}/{tr_server}/{ta} {ex.status or -1} {ex.resp_bytes} - - "
            f"{ex.term}{cookie_flags(ex)} "
            f"{act}/{fe_conn}/{be_conn}/{srv_conn}/{ex.retries} 0/{_backend_queue(ex)} "
            f"{{{ex.module}}} "
            f'"{word(head.method)} {logged_path(ex)} HTTP/{word(head.version)}"'
        )


# The C string encoder behind json.dumps: quotes and escapes one string (ASCII output).
_js: Callable[[str], str] = json.encoder.encode_basestring_ascii


class JsonLog:
    """One JSON object per line, the httplog facts with explicit names; no backend/server is
    `null` here (httplog spells them as HAProxy does). Built as one f-string, every string
    through the C encoder: about twice as fast as json.dumps of a dict."""

    __slots__ = ("_dates", "_exact_tr")

    def __init__(self, exact_tr: bool | None = None) -> None:
        self._dates = DateCache()
        self._exact_tr = stamps_headers_complete() if exact_tr is None else exact_tr

    def __call__(self, ex: Exchange, elapsed: float, now: float) -> str:
        client = ex.client
        tr, tw, tc, tr_server, ta = timers(ex, elapsed, self._exact_tr)
        act, fe_conn, be_conn, srv_conn = connection_counts(ex)
        head = ex.head
        backend = _js(ex.backend.name) if ex.backend is not None else "null"
        server = _js(ex.server.name) if ex.server is not None else "null"
        return (
            f'{{"client_ip":{_js(client.peer_ip.decode("ascii", "replace"))},'
            f'"client_port":{client.peer_port},'
            f'"accept_date":"{self._dates.iso(now - elapsed)}",'
            f'"frontend":{_js(ex.fe.name)},"backend":{backend},"server":{server},'
            f'"module":{_js(ex.module)},'
            f'"tr":{tr},"tw":{tw},"tc":{tc},"tr_server":{tr_server},"ta":{ta},'
            f'"status":{ex.status or -1},"bytes_read":{ex.resp_bytes},'
            f'"bytes_uploaded":{ex.req_body_bytes},'
            f'"termination_state":{_js(ex.term + cookie_flags(ex))},'
            f'"actconn":{act},"feconn":{fe_conn},"beconn":{be_conn},"srv_conn":{srv_conn},'
            f'"retries":{ex.retries},"srv_queue":0,"backend_queue":{_backend_queue(ex)},'
            f'"method":{_js(word(head.method))},"path":{_js(logged_path(ex))},'
            f'"http_version":{_js(word(head.version))}}}'
        )


def make_formatter(fmt: str) -> Formatter:
    if fmt == "json":
        return JsonLog()
    if fmt == "httplog":
        return HttpLog()
    raise ValueError(f"unknown access log format {fmt!r}")
