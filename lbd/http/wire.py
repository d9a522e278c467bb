"""Bytes that lbd writes itself: status lines and canned responses.

Rules: everything here is built once (at import, or per configuration) and reused; nothing
is formatted per request. Canned responses are small and carry a Content-Type and a
Content-Length. Every answer lbd gives itself closes the connection and says so
(`Connection: close`): the request it answers may have a body lbd never read.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the non-standard ones proxies must also drop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode("latin-1")


# Status lines for every code a server may send, built once.
STATUS_LINES: Final[dict[int, bytes]] = {code: _status_line(code) for code in range(100, 600)}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


_ERROR_MESSAGES: Final = {
    400: "Your browser sent an invalid request.",
    403: "Request forbidden by administrative rules.",
    404: "Not found.",
    405: "Method not allowed.",
    408: "Your browser didn't send a complete request in time.",
    413: "The request body is too large.",
    414: "The request URI is too long.",
    429: "Too many requests.",
    431: "The request header section is too large.",
    500: "An internal error occurred.",
    501: "Method not implemented.",
    502: "The server returned an invalid or incomplete response.",
    503: "No server is available to handle this request.",
    504: "The server didn't respond in time.",
    505: "HTTP version not supported.",
}


def _canned(status: int) -> bytes:
    # The HTML mirrors HAProxy's short error pages: no version, no server name.
    message = _ERROR_MESSAGES.get(status, reason_phrase(status))
    body = (
        f"<html><body><h1>{status} {reason_phrase(status)}</h1>\n{message}\n</body></html>\n"
    ).encode()
    head = (
        status_line(status)
        + b"Content-Type: text/html; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + b"Cache-Control: no-cache\r\n"
        + b"Connection: close\r\n"
    )
    return head + b"\r\n" + body


# status → full response bytes (head and body). No Date header: error pages are rare and
# HAProxy's carry none either.
_CANNED: Final[dict[int, bytes]] = {status: _canned(status) for status in _ERROR_MESSAGES}


def error_response(status: int) -> bytes:
    """A complete small error response (answers to HEAD are trimmed by the caller)."""
    return _CANNED.get(status) or _canned(status)


def simple_response(
    status: int,
    body: bytes,
    content_type: bytes,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A response built from config (`return:` and `redirect:` actions); built once per config."""
    parts = [status_line(status)]
    for name, value in extra_headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"Content-Type: " + content_type + b"\r\n")
    parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


CHUNK_END: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
