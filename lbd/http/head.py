"""A parsed request head, as the proxy needs it.

Rules: headers stay a list of (name, value) byte pairs in the order received, with the name's
case preserved; only the few headers that change framing or routing are looked at, once, by
`classify`. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Final

# Header names the proxy reacts to, mapped to small codes so `classify` does one dict lookup.
# Only headers `classify` reads are here: any other name costs one failed lookup. (Hop-by-hop
# and X-Forwarded-* headers are dropped by name when the head is rebuilt, in exchange.py.)
H_HOST: Final = 1
H_CONTENT_LENGTH: Final = 2
H_TRANSFER_ENCODING: Final = 3
H_CONNECTION: Final = 4
H_UPGRADE: Final = 5
H_XFF: Final = 6
H_DROPPED: Final = 7  # not forwarded: hop-by-hop, or X-Forwarded-* that lbd sets itself

SPECIAL_HEADERS: Final[dict[bytes, int]] = {
    b"host": H_HOST,
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE,
    b"x-forwarded-for": H_XFF,
    b"keep-alive": H_DROPPED,
    b"proxy-connection": H_DROPPED,
    b"te": H_DROPPED,
    b"trailer": H_DROPPED,
    b"proxy-authenticate": H_DROPPED,
    b"proxy-authorization": H_DROPPED,
    b"x-forwarded-proto": H_DROPPED,
    b"x-forwarded-host": H_DROPPED,
}
# H_HOST and H_CONTENT_LENGTH are forwarded as they are; every code above them is a header the
# rebuilt head drops (exchange.request_head_bytes), and marks the head `needs_filter`.


def special_key(name: bytes) -> int:
    """A cheap pre-filter for SPECIAL_HEADERS: the name's length and its first letter in lower
    case. Names whose key is not in SPECIAL_KEYS (User-Agent, Accept, Cookie…) cannot be
    special, and skip the lower() and the dict lookup."""
    n = len(name)
    return ((name[0] | 0x20) << 8) | n if 0 < n < 256 else 0


def _special_keys() -> bytes:
    table = bytearray(1 << 16)
    for name in SPECIAL_HEADERS:
        table[special_key(name)] = 1
    return bytes(table)


# Indexed by special_key(): 1 where a special name has that key.
SPECIAL_KEYS: Final = _special_keys()


class RequestHead:
    """Plain slots class: built once per request, so no dataclass machinery."""

    __slots__ = (
        "chunked",
        "connection_tokens",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "method",
        "needs_filter",
        "path",
        "query",
        "raw",
        "target",
        "upgrade",
        "version",
        "xff",
    )

    def __init__(
        self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.method = method
        self.target = target
        self.version = version  # b"1.1" or b"1.0"
        self.headers = headers
        self.path = b""  # target up to '?', percent-encoding untouched
        self.query = b""  # after '?', without it
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None  # the Upgrade value when the client asks to upgrade
        self.connection_tokens: frozenset[bytes] = EMPTY_TOKENS
        self.xff: bytes | None = None  # existing X-Forwarded-For value(s), comma-joined
        self.needs_filter = False  # has a header the rebuilt head drops (set by classify)
        # The request line and header lines as received (each ending in CRLF), when an HTTP/1.1
        # head arrived whole at the start of a read with a target that stays as it is: then
        # the server gets these bytes plus lbd's X-Forwarded-* lines instead of a rebuilt head.
        # Never set when `needs_filter`; whatever edits the method, target or headers afterwards
        # sets it back to None.
        self.raw: bytes | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


EMPTY_TOKENS: Final[frozenset[bytes]] = frozenset()
_COMMON_TOKENS: Final = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
    b"upgrade": frozenset({b"upgrade"}),
}


def request_line_version(data: bytes, method: bytes, target: bytes) -> bytes | None:
    """b"1.1" or b"1.0" when `data` starts with exactly `METHOD SP target SP HTTP/1.x CRLF`,
    else None (the caller then asks the parser). httptools formats its version string anew per
    call (str.format), which costs more than these few compares of bytes already in memory."""
    m = len(method)
    at = m + len(target) + 2
    if data[at : at + 7] != b"HTTP/1." or data[at + 8 : at + 10] != b"\r\n":
        return None
    if data[:m] != method or data[m : m + 1] != b" " or data[m + 1 : at - 1] != target:
        return None
    minor = data[at + 7 : at + 8]
    if minor == b"1":
        return b"1.1"
    return b"1.0" if minor == b"0" else None


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of an origin-form target; a fragment stays in the path (inspect rejects it)."""
    q = target.find(b"?")
    if q < 0:
        return target, b""
    return target[:q], target[q + 1 :]


def parse_connection_tokens(value: bytes) -> frozenset[bytes]:
    common = _COMMON_TOKENS.get(value.lower())
    if common is not None:
        return common
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
