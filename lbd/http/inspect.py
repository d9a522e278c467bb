"""Sans-IO checks of a request head: framing, Host, version, method and request-target.

Rules: pure functions over bytes; a refusal raises a typed BadRequest whose `status` is the
answer and whose `reason` is counted per frontend. httptools (llhttp 9, strict: no
`set_dangerous_leniencies` is ever called) already refuses, before any callback sees them:
obs-fold, whitespace before the colon, invalid header-name bytes, bare CR, bare LF, NUL and other
controls in header values, raw controls / space / non-ASCII in the target, bad chunk sizes and
chunk data overruns, unknown methods. `parser_error` names those refusals; what llhttp lets
through is re-checked here (RFC 9112 §6, RFC 9110 §7.2):
- Content-Length together with Transfer-Encoding is a smuggling vector → 400 (§6.1 allows a
  server to reject it; HAProxy and nginx do).
- Content-Length must be digits only; several different values, or a list, → 400 (§6.3).
- Transfer-Encoding must end with `chunked` and contain nothing else we could decode → 501 for an
  unknown coding, 400 for a malformed list; HTTP/1.0 with Transfer-Encoding → 400 (§6.1).
- HTTP/1.1 needs exactly one Host (RFC 9112 §3.2), and a Host must be a valid uri-host [":"
  port] (RFC 9110 §7.2): userinfo, spaces or a non-numeric port → 400.
- Only HTTP/1.0 and HTTP/1.1 are served → 505, also for HTTP/0.9 (`GET /` with no version),
  HTTP/2.0 and RTSP/ICE request lines (llhttp parses all of them).
- A method outside the frontend's allow-list → 501 (RFC 9110 §9.1); CONNECT → 501.
- The request-target goes through lbd.http.target; the common clean one costs one translate.
Limits: the whole header section and the header count are bounded by the caller (limits.*);
locating the byte llhttp refused re-parses at most LOCATE_LIMIT (16 KiB) bytes, log2 times.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from lbd.errors import BadRequest, NotImplementedMethod, VersionNotSupported
from lbd.http.head import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_HOST,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_XFF,
    SPECIAL_HEADERS,
    SPECIAL_KEYS,
    RequestHead,
    parse_connection_tokens,
    special_key,
    split_target,
)
from lbd.http.target import TargetReport, analyze, is_clean, valid_host

# How far `locate_parse_error` re-parses to find the offending byte (a request head is bounded
# by max_header_bytes + max_uri_bytes anyway; beyond this the offset is reported unknown).
LOCATE_LIMIT: Final = 16 * 1024


class HeadRejected(BadRequest):
    """A head refused at headers-complete; `header` names the field at fault, when one is."""

    def __init__(
        self, reason: str, detail: str = "", status: int | None = None, header: bytes = b""
    ) -> None:
        super().__init__(reason, detail, status)
        self.header = header


def classify(head: RequestHead, allowed_methods: frozenset[bytes] | None = None) -> int:
    """Fill the framing fields of `head` from its headers, refusing what is unsafe to forward.
    Returns the size of the header section (names, values and separators) for the 431 limit.
    The request-target is left to `inspect_target`."""
    version = head.version
    if version != b"1.1" and version != b"1.0":
        if version in (b"0.9", b"0.0"):
            # RFC 9112 §2.3 / RFC 1945: a request line without a version is HTTP/0.9.
            raise VersionNotSupported("http09", "HTTP/0.9")
        raise VersionNotSupported("bad-version", version.decode("latin-1"))
    method = head.method
    if method == b"CONNECT":
        raise NotImplementedMethod("connect-method", "lbd is not a forward proxy")
    if allowed_methods is not None and method not in allowed_methods:
        # RFC 9110 §9.1: a method the server does not implement → 501.
        raise NotImplementedMethod("method-not-allowed", method.decode("latin-1"))

    special = SPECIAL_HEADERS
    host: bytes | None = None
    host_count = 0
    te_values: list[bytes] | None = None
    cl_value: bytes | None = None
    connection: bytes | None = None
    upgrade: bytes | None = None
    size = 0
    maybe_special = SPECIAL_KEYS
    for name, value in head.headers:
        size += len(name) + len(value) + 4
        if not maybe_special[special_key(name)]:
            continue
        code = special.get(name.lower())
        if code is None:
            continue
        if code > H_CONTENT_LENGTH:
            head.needs_filter = True
        if code == H_HOST:
            host_count += 1
            host = value
        elif code == H_CONTENT_LENGTH:
            if cl_value is not None and value != cl_value:
                raise HeadRejected("content-length-conflict", header=name)
            cl_value = value
        elif code == H_TRANSFER_ENCODING:
            if te_values is None:
                te_values = [value]
            else:
                te_values.append(value)
        elif code == H_CONNECTION:
            connection = value if connection is None else connection + b"," + value
        elif code == H_UPGRADE:
            upgrade = value
        elif code == H_XFF:
            head.xff = value if head.xff is None else head.xff + b", " + value
    head.host = host

    if host_count > 1:
        raise HeadRejected("duplicate-host", header=b"Host")
    if host is None:
        if version == b"1.1":
            raise HeadRejected("missing-host")
    elif not valid_host(host):
        # RFC 9110 §7.2 / §4.2.4: no userinfo in a Host; RFC 3986 §3.2.2 for the rest.
        reason = "host-userinfo" if b"@" in host else "bad-host"
        raise HeadRejected(reason, header=b"Host")

    if cl_value is not None:
        # RFC 9110 §8.6: Content-Length = 1*DIGIT (18 digits: beyond any real body, below 2^63)
        if not cl_value.isdigit() or len(cl_value) > 18:
            raise HeadRejected("bad-content-length", header=b"Content-Length")
        head.content_length = int(cl_value)

    if te_values is not None:
        _check_transfer_encoding(head, te_values, cl_value is not None)

    if connection is not None:
        tokens = parse_connection_tokens(connection)
        head.connection_tokens = tokens
        if version == b"1.1":
            head.keep_alive = b"close" not in tokens
        else:
            head.keep_alive = b"keep-alive" in tokens
        if upgrade is not None and b"upgrade" in tokens:
            # h2c would switch the server leg to HTTP/2 behind our back; drop it (RFC 9113 §3.1).
            if upgrade.strip().lower() != b"h2c":
                head.upgrade = upgrade
    elif version == b"1.0":
        head.keep_alive = False
    return size


def _check_transfer_encoding(head: RequestHead, values: list[bytes], has_cl: bool) -> None:
    if head.version == b"1.0":
        raise HeadRejected("te-on-http10", header=b"Transfer-Encoding")
    if has_cl:
        raise HeadRejected("cl-and-te", header=b"Transfer-Encoding")
    te = b",".join(values)
    # RFC 9112 §6.1: Transfer-Encoding = #transfer-coding, and chunked must be the final one.
    codings = [c.strip().lower() for c in te.split(b",")]
    if codings != [b"chunked"]:
        if any(not c for c in codings) or codings.count(b"chunked") > 1:
            raise HeadRejected("bad-transfer-encoding", header=b"Transfer-Encoding")
        raise NotImplementedMethod("unsupported-transfer-encoding", te.decode("latin-1"))
    head.chunked = True


def inspect_target(head: RequestHead) -> TargetReport | None:
    """Set `head.path` and `head.query`. None for a clean target (the fast path); otherwise the
    report, with `head.path` the normalized path to route on and `head.target` the origin-form
    target to forward unless the url_policy normalizes it."""
    target = head.target
    if is_clean(target):
        head.path, head.query = split_target(target)
        return None
    report = analyze(head.method, target, head.host)
    head.path = report.path
    head.query = report.query
    head.target = report.forward
    return report


# --- what llhttp refused, by name ---------------------------------------------------------------

# llhttp's error reasons (llhttp 9, `llhttp_get_error_reason`) → (lbd reason, status).
_PARSER_REASONS: Final[tuple[tuple[str, str, int], ...]] = (
    ("Invalid method", "unknown-method", 501),  # also "… for HTTP/x.x request" (RTSP methods)
    ("Expected SOURCE method for ICE", "bad-protocol", 505),
    ("HTTP/2 Connection Preface", "bad-version", 505),
    ("Pause on PRI", "bad-version", 505),
    ("Invalid HTTP version", "bad-version", 505),
    ("Invalid major version", "bad-request-line", 400),
    ("Invalid minor version", "bad-request-line", 400),
    ("Expected HTTP/", "bad-request-line", 400),  # refined by `parser_error` (space in target)
    ("Unexpected start char in url", "bad-target-form", 400),
    ("Unexpected char in url", "bad-target-form", 400),  # schema / server
    ("in url", "target-bad-char", 400),  # "Invalid char(acters) in url path/query/…"
    ("Invalid header token", "bad-header-name", 400),
    ("Invalid header field char", "bad-header-name", 400),
    ("Invalid header value char", "bad-header-value", 400),  # NUL, controls, DEL
    ("Unexpected whitespace after header value", "obs-fold", 400),
    ("Unexpected space after start line", "obs-fold", 400),
    ("chunk", "bad-chunk", 400),  # size, extensions, overrun, missing CRLF, overflow
    ("Chunk size overflow", "bad-chunk", 400),
    ("Missing expected CR", "bare-lf", 400),
    ("Missing expected LF", "bare-cr", 400),
    ("Expected LF after", "bare-cr", 400),
    ("Expected CRLF", "bad-line-ending", 400),
    ("can't be present with", "cl-and-te", 400),
    ("Content-Length", "bad-content-length", 400),
    ("Transfer-Encoding", "bad-transfer-encoding", 400),
    ("Data after `Connection: close`", "data-after-close", 400),
)

# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT (case-sensitive, but a lower-case
# spelling is a version problem, not a target problem).
_VERSION_WORD: Final = re.compile(rb"[A-Za-z]+/\d\.\d\r?$")


def parser_error(message: str, data: bytes = b"", url: bytes = b"") -> BadRequest:
    """The BadRequest for an llhttp refusal. `data` (the bytes fed) and `url` (the target read so
    far) tell a raw space inside the target from a bad version word."""
    for needle, reason, status in _PARSER_REASONS:
        if needle in message:
            if reason == "bad-request-line" and needle == "Expected HTTP/" and url:
                # `GET /a b HTTP/1.1`: llhttp ended the target at the space and then found `b`.
                at = data.find(url + b" ")
                if at >= 0:
                    rest = data[at + len(url) + 1 :].split(b"\n", 1)[0]
                    if not _VERSION_WORD.fullmatch(rest):
                        return BadRequest("target-bad-char", "space in the request-target")
            if status == 501:
                return NotImplementedMethod(reason, message)
            if status == 505:
                return VersionNotSupported(reason, message)
            return BadRequest(reason, message)
    return BadRequest("bad-request-syntax", message)


class _Sink:
    """A parser protocol with no callbacks: llhttp only validates."""


def locate_parse_error(data: bytes) -> int:
    """The offset of the first byte llhttp refuses in `data`, which must start at a message's
    first byte; -1 when it parses (the error lies beyond LOCATE_LIMIT or needs earlier state).
    Bisects with fresh parsers: at most log2(LOCATE_LIMIT) re-parses, on the error path only."""
    data = data[:LOCATE_LIMIT]

    def fails(n: int) -> bool:
        try:
            httptools.HttpRequestParser(_Sink()).feed_data(data[:n])
        except httptools.HttpParserUpgrade:
            return False
        except httptools.HttpParserError:
            return True
        return False

    if not fails(len(data)):
        return -1
    lo, hi = 0, len(data)  # fails(hi) holds, fails(lo) does not (an empty feed never fails)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi - 1


# RFC 1945 §5.1 Simple-Request = "GET" SP Request-URI CRLF: a request line ending right after
# its target. A header line cannot look like this: llhttp refuses space before a colon.
_HTTP09_LINE: Final = re.compile(rb"(?:^|\n)[A-Z][A-Z_\-]* +(\S+)\r?\n$")


def is_http09(data: bytes, url: bytes) -> bool:
    """True when `data` (a read that left a head incomplete) ends with an HTTP/0.9 request line
    for `url`: llhttp then waits for headers that will never come."""
    m = _HTTP09_LINE.search(data)
    return m is not None and m.group(1) == url


# RFC 2326 §6.1 / RFC 7826 §8.1 (RTSP) and the Icecast ICE protocol share HTTP's request-line
# shape; llhttp reports their version numbers as if they were HTTP's.
_OTHER_PROTOCOL: Final = re.compile(rb"(?:^|\n)[A-Z][A-Z_\-]* +(\S+) +(RTSP|ICE)/\d\.\d\r?\n")


def other_protocol(data: bytes, url: bytes) -> bytes | None:
    """b"RTSP" or b"ICE" when the request line for `url` in `data` names that protocol."""
    if b"RTSP/" not in data and b"ICE/" not in data:
        return None
    for m in _OTHER_PROTOCOL.finditer(data):
        if m.group(1) == url:
            return m.group(2)
    return None


class TargetRejected(BadRequest):
    """A request-target refused by the url_policy; carries what `analyze` found and the module
    the normalized path belongs to (captures are counted per reason and module)."""

    def __init__(self, report: TargetReport, module: str, target: bytes) -> None:
        first = report.violations[0]
        super().__init__(first.reason, f"at target byte {first.offset}")
        self.report = report
        self.module = module
        self.target = target  # as received
