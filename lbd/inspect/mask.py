"""Excerpts of refused requests, with everything that may identify a patient masked.

Rules (patient identifiers travel in URLs, session ids in cookies):
- Query values become `***`; a parameter name is kept only when it looks like a name (short,
  ASCII, at least one letter): `?ipp=***&tab=***`, while `?123456` becomes `?***`. A fragment
  becomes `#***`, userinfo (`http://***@host/`, `Host: ***@host`) too.
- Header values are shown only for the framing and content-negotiation fields in SHOWN_HEADERS
  (query-masked too); every other value, cookies and credentials included, becomes `***`.
  A folded continuation line is masked like the field it continues. CR and LF both end a line
  here, so a bare CR cannot smuggle a cookie line past the masking.
- A first line that may not start a message (the caller says so) is masked whole.
- Bytes are escaped: printable ASCII as is, `\\` doubled, `\\r \\n \\t` spelled, the rest `\\xNN`.
Limits: an excerpt shows at most EXCERPT_BYTES source bytes around the offending offset.
"""

from __future__ import annotations

import re

MASK = "***"
EXCERPT_BYTES = 160  # source bytes shown around the offending byte (HAProxy shows its buffer)
EXCERPT_BEFORE = 64  # of which before it
METHOD_CHARS = 16

# Fields whose value is shown (then query-masked); any other value is `***`.
SHOWN_HEADERS = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"expect",
        b"te",
        b"trailer",
        b"keep-alive",
        b"content-type",
        b"content-encoding",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"user-agent",
        b"cache-control",
        b"pragma",
        b"origin",
        b"referer",
        b"x-forwarded-proto",
        b"x-requested-with",
    }
)

# A query parameter name worth keeping: short, ASCII, at least one letter (not a grammar rule:
# `123456=x` is likely an identifier used as a name, so it is masked whole).
_PARAM_NAME = re.compile(rb"[A-Za-z0-9_.\-\[\]]{0,63}[A-Za-z][A-Za-z0-9_.\-\[\]]{0,63}")
# A line ends at CR or LF alike (RFC 9112 §2.2 lets recipients take a bare LF as a line end;
# a bare CR is refused, but the excerpt must not let one hide a field line).
_LINE = re.compile(rb"[^\r\n]*")
# RFC 9110 §5.1: field-name = token (anything else here is masked as a value would be)
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*:")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version (method: the upper-case
# tokens llhttp knows)
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z_\-]* ")

# RFC 9112 §2.1: the header section ends at an empty line (here in any spelling of line ends).
_HEAD_END = re.compile(rb"\r?\n\r?\n")

Span = tuple[int, int]


def escape(data: bytes) -> str:
    """Bytes as printable ASCII (see the banner)."""
    out: list[str] = []
    for c in data:
        if c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        elif c == 0x0D:
            out.append("\\r")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def method_text(method: bytes) -> str:
    return escape(method[:METHOD_CHARS])


def _mask_query(data: bytes, start: int, end: int, spans: list[Span]) -> None:
    """Mask the values of the query in data[start:end] (after its '?')."""
    i = start
    while i <= end:
        j = i
        while j < end and data[j] not in b"&;":
            j += 1
        if j > i:
            eq = data.find(b"=", i, j)
            if eq < 0 or not _PARAM_NAME.fullmatch(data, i, eq):
                spans.append((i, j))
            elif j > eq + 1:
                spans.append((eq + 1, j))
        i = j + 1


# RFC 3986 §3.2: authority = [ userinfo "@" ] host [ ":" port ], after "//"
_USERINFO = re.compile(rb"//([^/?#@\s]*)@")


def _mask_urls(data: bytes, start: int, end: int, spans: list[Span]) -> None:
    """Mask userinfo, query values and fragments of every URL in data[start:end]."""
    for m in _USERINFO.finditer(data, start, end):
        if m.end(1) > m.start(1):
            spans.append(m.span(1))
    i = start
    while i < end:
        q = data.find(b"?", i, end)
        h = data.find(b"#", i, end)
        if q < 0 and h < 0:
            return
        at = q if h < 0 or (0 <= q < h) else h
        stop = at
        while stop < end and data[stop] not in b" \t":
            stop += 1
        if data[at] == 0x3F:  # '?'
            frag = data.find(b"#", at, stop)
            _mask_query(data, at + 1, frag if frag >= 0 else stop, spans)
            if frag >= 0 and stop > frag + 1:
                spans.append((frag + 1, stop))
        elif stop > at + 1:
            spans.append((at + 1, stop))
        i = stop + 1


def mask_spans(data: bytes, *, starts_message: bool = True) -> list[Span]:
    """Byte ranges of `data` (a request head, or its start) to show as `***`."""
    spans: list[Span] = []
    first = True
    shown = True  # the kind of the last field line, for folded continuations
    for m in _LINE.finditer(data):
        start, end = m.span()
        if start == end:
            continue
        if first:
            first = False
            if starts_message or _REQUEST_LINE.match(data, start):
                _mask_urls(data, start, end, spans)  # the request line (or what stands for it)
            else:
                spans.append((start, end))  # may be the middle of any field, or of a body
                shown = False
            continue
        if data[start] in b" \t":  # obs-fold: continues the previous field
            if shown:
                _mask_urls(data, start, end, spans)
            else:
                spans.append((start, end))
            continue
        f = _FIELD.match(data, start, end)
        if f is None:
            # Not a field line (a broken one, or the request line of a pipelined request).
            if _REQUEST_LINE.match(data, start):
                _mask_urls(data, start, end, spans)
            else:
                spans.append((start, end))
            continue
        shown = f.group(1).lower() in SHOWN_HEADERS
        value_start = f.end()
        while value_start < end and data[value_start] in b" \t":
            value_start += 1
        if value_start >= end:
            continue
        if not shown:
            spans.append((value_start, end))
            continue
        at = data.find(b"@", value_start, end)
        if at > value_start and f.group(1).lower() == b"host":
            spans.append((value_start, at))  # Host: user@host — userinfo has no business here
        _mask_urls(data, value_start, end, spans)
    return spans


def render(data: bytes, spans: list[Span], lo: int = 0, hi: int | None = None) -> str:
    """data[lo:hi] escaped, each masked span that reaches into it shown once as `***`."""
    hi = len(data) if hi is None else min(hi, len(data))
    out: list[str] = []
    i = lo
    for s, e in sorted(spans):
        if e <= i or s >= hi:
            continue
        if s > i:
            out.append(escape(data[i:s]))
        out.append(MASK)
        i = max(i, e)
    if i < hi:
        out.append(escape(data[i:hi]))
    return "".join(out)


def excerpt(data: bytes, offset: int = -1, *, starts_message: bool = True) -> str:
    """A masked, escaped excerpt of a request head around `offset` (-1: from the start)."""
    end = _HEAD_END.search(data)
    if end is not None:
        data = data[: end.end()]  # never a body byte, whatever line ends the client used
    spans = mask_spans(data, starts_message=starts_message)
    lo = max(0, offset - EXCERPT_BEFORE) if offset >= 0 else 0
    hi = min(len(data), lo + EXCERPT_BYTES)
    text = render(data, spans, lo, hi)
    return ("..." if lo > 0 else "") + text + ("..." if hi < len(data) else "")


def request_line(method: bytes, target: bytes, version: bytes = b"") -> bytes:
    """The request line lbd read (for an excerpt built from a parsed head)."""
    line = method + b" " + target
    return line + b" HTTP/" + version if version else line
