"""A server's response head, passed on from its raw bytes.

Rules: llhttp has already validated the head (no header callbacks: one Python call per header
was the largest cost of a small response). Here hop-by-hop lines are cut out (RFC 9110 §7.6.1,
plus any the server named in Connection) and the framing noted, with no Python method call
per header. Names compare without regard to case; the lines that pass keep the server's
spelling and order. The hop-by-hop names are wire.HOP_BY_HOP's (a test holds the two equal).
"""

from __future__ import annotations

from typing import Final

_FOLD: Final[tuple[bytes, ...]] = (b" ", b"\t")
STANDARD_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection may name a header as hop-by-hop; these are never dropped for it: removing the
# framing (or the Host) the other side relies on while lbd keeps the body would desync the
# two legs (`Connection: content-length` is a known request-smuggling trick).
KEPT_TOKENS: Final = STANDARD_TOKENS | {b"content-length", b"host"}
NO_LENGTH: Final = -1


def end_to_end(raw: bytes) -> tuple[bytes, int, bool]:
    """(lines, length, chunked) for `raw`, a head with its status line first and ending in
    CRLF CRLF: its header lines to send on, each ending in CRLF, without the status line, the
    final empty line or any hop-by-hop line; the Content-Length or NO_LENGTH; whether the body
    is chunked. One split() for the whole head; per line its first byte, and for the few
    lines whose name could be a hop-by-hop one or Content-Length, byte compares (compiled to C
    by mypyc: a lower() or find() would be a method call per line)."""
    length = NO_LENGTH
    chunked = False
    named: set[bytes] | None = None
    cuts: list[int] = []  # start and end offsets in raw of the lines to drop
    pos = 0
    body_start = -1
    dropping = False
    for line in raw.split(b"\r\n"):
        start = pos
        pos += len(line) + 2
        if body_start < 0:
            body_start = pos  # the status line
            continue
        if not line:
            continue  # the final empty line
        c = line[0]
        if c == 32 or c == 9:  # obs-fold: a continuation of the line before (RFC 9112 §5.2)
            if dropping:
                cuts.append(start)
                cuts.append(pos)
            continue
        dropping = False
        c |= 0x20  # ASCII lower case
        if c == 99:  # c
            if _is_name(line, b"content-length:", b"Content-Length:"):
                length = int(line[15:])  # llhttp already refused a bad or conflicting one
            elif _is_name(line, b"connection:", b"Connection:"):
                dropping = True
                tokens = _extra_tokens(line[11:])
                if tokens is not None:
                    named = tokens if named is None else named | tokens
        elif c == 116:  # t
            if _is_name(line, b"transfer-encoding:", b"Transfer-Encoding:"):
                dropping = True
                # The last coding decides (RFC 9112 §6.3), as a token: not "notchunked".
                chunked = line[18:].rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            else:
                dropping = _is_name(line, b"te:", b"TE:") or _is_name(
                    line, b"trailer:", b"Trailer:"
                )
        elif c == 107:  # k
            dropping = _is_name(line, b"keep-alive:", b"Keep-Alive:")
        elif c == 112:  # p
            dropping = (
                _is_name(line, b"proxy-connection:", b"Proxy-Connection:")
                or _is_name(line, b"proxy-authenticate:", b"Proxy-Authenticate:")
                or _is_name(line, b"proxy-authorization:", b"Proxy-Authorization:")
            )
        elif c == 117:  # u
            dropping = _is_name(line, b"upgrade:", b"Upgrade:")
        if dropping:
            cuts.append(start)
            cuts.append(pos)
    end = len(raw) - 2
    if not cuts:
        lines = raw[body_start:end]
    else:
        pieces: list[bytes] = []
        prev = body_start
        for i in range(0, len(cuts), 2):
            pieces.append(raw[prev : cuts[i]])
            prev = cuts[i + 1]
        pieces.append(raw[prev:end])
        lines = b"".join(pieces)
    if named is not None:
        # Rare: the server named more hop-by-hop headers in Connection; drop those too.
        lines = _without(lines, named)
    return lines, length, chunked


def _is_name(line: bytes, lowered: bytes, usual: bytes) -> bool:
    """Does `line` start with the header name `lowered` (with its colon), in any case? The
    colon's place and the usual spelling are checked first, without a method call."""
    n = len(lowered)
    if len(line) < n or line[n - 1] != 58:  # ':'
        return False
    return line.startswith(usual) or line.startswith(lowered) or line[:n].lower() == lowered


def _extra_tokens(value: bytes) -> set[bytes] | None:
    """The names a Connection value lists beyond close/keep-alive/upgrade."""
    if value == b" keep-alive" or value == b" close":
        return None  # what servers send: no strip(), no lower()
    value = value.strip().lower()
    if value in STANDARD_TOKENS:
        return None
    tokens = {t.strip() for t in value.split(b",")} - KEPT_TOKENS
    return tokens or None


def _without(lines: bytes, names: set[bytes]) -> bytes:
    out: list[bytes] = []
    dropping = False
    for line in lines.split(b"\r\n")[:-1]:
        if line.startswith(_FOLD):
            if not dropping:
                out.append(line)
            continue
        dropping = line.partition(b":")[0].strip().lower() in names
        if not dropping:
            out.append(line)
    out.append(b"")
    return b"\r\n".join(out)


def header_list(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of `raw`, for the rarer paths that edit headers (persistence)."""
    pairs: list[tuple[bytes, bytes]] = []
    for line in raw.split(b"\r\n")[1:-2]:
        if line.startswith(_FOLD) and pairs:
            name, value = pairs[-1]
            pairs[-1] = (name, value + b" " + line.strip())
            continue
        name, _, value = line.partition(b":")
        pairs.append((name, value.strip()))
    return pairs


def raw_head(status_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A head built back from (name, value) pairs."""
    parts = [status_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def has_header(raw: bytes, lowered_name: bytes) -> bool:
    """Whether `raw` has a header line named `lowered_name` (any case)."""
    return b"\r\n" + lowered_name + b":" in raw.lower()
