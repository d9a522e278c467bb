"""Request-target checks and normalization (RFC 3986, RFC 9112 §3.2), sans-IO.

Rules:
- Pure functions over bytes: no I/O, no configuration, no clock. `analyze` never raises; it
  names every violation it finds (`Violation`: reason, offset in the target, whether
  normalization can repair it) and the caller applies the url_policy (reject | log | normalize).
- The common clean target pays one `bytes.translate` and two substring tests (`is_clean`).
  Everything else goes through `analyze`, which may spend tens of microseconds.
- Routing and modules match on `TargetReport.path`, never on the raw target: percent-encoded
  unreserved characters decoded, hex upper-cased, raw backslashes read as '/', slashes merged,
  dot-segments resolved and clamped at the root. When a stricter reading (decoding twice,
  splitting on %2F / %5C, dropping ';' parameters as Tomcat does) reveals dot-segments that the
  RFC reading does not see, or when the path is double-encoded (%2561), routing uses the stricter
  reading: a backend that decodes more than RFC 3986 allows must never be reached around a rule.
- `TargetReport.normalized` is the origin-form target to forward under `normalize`; None when a
  violation cannot be repaired (NUL, controls, bad percent-encoding, double encoding, climbing
  above the root, hidden dot-segments, a bad query, a wrong form). `normalize` is idempotent.
- The query is checked but never rewritten (applications that sign their query strings keep
  working); a fragment is dropped by normalization (RFC 9112 §3.2: it is not part of the target).
- Absolute-form is always forwarded as origin-form (RFC 9112 §3.2.1: a client sends origin-form
  to an origin server), so the server sees the path lbd routed on.

Limits: the target's length is bounded before it gets here (limits.max_uri_bytes → 414; 8 KiB by
default, as nginx's large_client_header_buffers; HAProxy bounds it by tune.bufsize). Decoding for
the strict reading stops after MAX_DECODE_ROUNDS rounds.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

# --- reasons (counted per frontend, shown by `show errors`) -------------------------------------

BAD_CHAR: Final = "target-bad-char"  # a byte RFC 3986 does not allow there
BAD_PERCENT: Final = "bad-percent-encoding"  # '%' not followed by two hex digits
DOUBLE_ENCODING: Final = (
    "double-encoding"  # %25 followed by two hex digits in the path (%2561 → %61)
)
ENCODED_NUL: Final = "encoded-nul"  # %00
ENCODED_CONTROL: Final = "encoded-control"  # %01-%1F or %7F in the path
DOT_SEGMENT: Final = "dot-segment"  # '.' or '..' segment that stays inside the root
ABOVE_ROOT: Final = "dot-segment-above-root"  # '..' that climbs above '/', in any encoding
HIDDEN_DOT_SEGMENT: Final = (
    "hidden-dot-segment"  # dot-segment seen only when decoded twice / split on %2F
)
BACKSLASH: Final = "backslash"  # raw '\' in the path
FRAGMENT: Final = "fragment"  # '#…' in the target
ASTERISK_FORM: Final = "asterisk-form"  # '*' with a method other than OPTIONS
HOST_MISMATCH: Final = "absolute-form-host-mismatch"  # absolute-form authority ≠ Host header
USERINFO: Final = "userinfo"  # user@host in an absolute-form target
BAD_FORM: Final = "bad-target-form"  # neither origin-, absolute- nor asterisk-form
EMPTY_PATH: Final = "empty-path"  # absolute-form without a path (forwarded as '/')

MAX_DECODE_ROUNDS: Final = 3  # the strict reading decodes %252e → %2e → '.' and one more round

# --- grammar ------------------------------------------------------------------------------------

# RFC 3986 §2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
UNRESERVED: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# RFC 3986 §2.2: sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
SUB_DELIMS: Final = b"!$&'()*+,;="
# RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
#                path-absolute = "/" [ segment-nz *( "/" segment ) ]
PATH_CHARS: Final = UNRESERVED + SUB_DELIMS + b":@/"
# RFC 3986 §3.4: query = *( pchar / "/" / "?" ). Browsers send `{ } | ^ [ ] \ `` raw in a query
# (WHATWG's query percent-encode set leaves them), so they are tolerated there, not in a path.
QUERY_CHARS: Final = PATH_CHARS + b"?{}|^[]\\`"
# The fast test accepts these; anything else (including '%') sends the target to `analyze`.
_CLEAN_CHARS: Final = PATH_CHARS + b"?"
# 1 for the bytes the fast tests accept, indexed by byte value.
_CLEAN_TABLE: Final = bytes(1 if c in _CLEAN_CHARS else 0 for c in range(256))
_HOST_TABLE: Final = bytes(1 if c in UNRESERVED else 0 for c in range(256))

# RFC 3986 §2.1: pct-encoded = "%" HEXDIG HEXDIG
_PCT: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
# What the path scan stops at: anything outside pchar and '/', '%' included.
_PATH_ODD: Final = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")
# What the query scan stops at: anything outside QUERY_CHARS, '%' included.
_QUERY_ODD: Final = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?{}|^\[\]\\`]")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
# RFC 3986 §3: hier-part = "//" authority path-abempty (the only shape absolute-form may take
# for http and https, RFC 9110 §4.2)
_ABSOLUTE: Final = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
# RFC 9110 §7.2: Host = uri-host [ ":" port ]
# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name
#                  IP-literal = "[" ( IPv6address / IPvFuture ) "]" (IPvFuture refused)
#                  reg-name = *( unreserved / pct-encoded / sub-delims )
# RFC 3986 §3.2.3: port = *DIGIT
HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
# RFC 3986 §3.3: a dot-segment is "." or ".." (here also in their percent-encoded spellings and
# with '\' as a separator, for the offset of the first one).
_DOT_SEGMENT_AT: Final = re.compile(rb"(?:^|[/\\])(?:\.|%2[eE]){1,2}(?=[/\\]|$)")

_DEFAULT_PORT: Final = {b"http": b"80", b"https": b"443"}
_UNRESERVED_SET: Final = frozenset(UNRESERVED)
_HEXDIGITS: Final = frozenset(b"0123456789abcdefABCDEF")


class Violation(NamedTuple):
    reason: str
    offset: int  # in the request-target as received
    fixable: bool  # `normalize` can repair it


class TargetReport:
    """What `analyze` found. `path` is for routing; `forward` is the target to send when it is
    not normalized (origin-form, otherwise as received); `normalized` is None when not fixable."""

    __slots__ = ("forward", "normalized", "path", "query", "violations")

    def __init__(
        self,
        path: bytes,
        query: bytes,
        forward: bytes,
        normalized: bytes | None,
        violations: list[Violation],
    ) -> None:
        self.path = path
        self.query = query
        self.forward = forward
        self.normalized = normalized
        # Unrepairable ones first, then by position: violations[0] is the reason counted.
        self.violations = sorted(violations, key=lambda v: (v.fixable, v.offset))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.reason for v in self.violations))

    @property
    def fatal(self) -> bool:
        return self.normalized is None

    def __repr__(self) -> str:
        return (
            f"TargetReport(path={self.path!r}, forward={self.forward!r}, "
            f"normalized={self.normalized!r}, violations={self.violations!r})"
        )


# --- the fast test --------------------------------------------------------------------------------


def is_clean(target: bytes) -> bool:
    """True for an origin-form target already in normal form with nothing to report: only
    pchar, '/' and '?' bytes, no '%', no '//' and no '/.'. One pass over the bytes with a
    table: compiled, a few instructions a byte, where a translate, a find or a regular
    expression each cost a method call (several hundred to a few thousand instructions)."""
    n = len(target)
    if n == 0 or target[0] != 47:  # '/'
        return False
    table = _CLEAN_TABLE
    after_slash = True
    for i in range(1, n):
        c = target[i]
        if not table[c]:
            return False
        if after_slash and (c == 47 or c == 46):  # '//' or '/.'
            return False
        after_slash = c == 47
    return True


def split_clean(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a target `is_clean` accepted."""
    q = target.find(b"?")
    if q < 0:
        return target, b""
    return target[:q], target[q + 1 :]


def valid_host(host: bytes) -> bool:
    """RFC 9110 §7.2 Host value (userinfo, spaces, '/' or a non-numeric port refused)."""
    # Most hosts are a plain name, maybe with a port: one pass over the bytes for those.
    if _is_plain_host(host):
        return True
    colon = host.rfind(b":")
    if colon >= 0 and host[:1] != b"[":
        port = host[colon + 1 :]
        if port and not port.isdigit():
            return False
    return HOST_RE.fullmatch(host) is not None


def _is_plain_host(host: bytes) -> bool:
    """Unreserved bytes, then optionally ':' and digits (what valid_host accepts at once)."""
    table = _HOST_TABLE
    n = len(host)
    i = 0
    while i < n and table[host[i]]:
        i += 1
    if i == n:
        return True
    if host[i] != 58:  # ':'
        return False
    i += 1
    while i < n and 48 <= host[i] <= 57:
        i += 1
    return i == n


def same_authority(a: bytes, b: bytes, scheme: bytes) -> bool:
    """Authorities compared as RFC 3986 §6.2.2.1 and §6.2.3 do: case-insensitive host, the
    scheme's default port equal to no port."""
    return _canonical_authority(a, scheme) == _canonical_authority(b, scheme)


def _canonical_authority(value: bytes, scheme: bytes) -> bytes:
    value = value.strip().lower()
    default = _DEFAULT_PORT.get(scheme)
    if default is not None and value.endswith(b":" + default):
        value = value[: -len(default) - 1]
    return value.removesuffix(b":")


# --- the analysis ---------------------------------------------------------------------------------


def analyze(method: bytes, target: bytes, host: bytes | None) -> TargetReport:
    """Every violation in `target`, the path to route on and the normalized target."""
    if target == b"*":
        # RFC 9112 §3.2.4: asterisk-form = "*", only for a server-wide OPTIONS request.
        if method == b"OPTIONS":
            return TargetReport(b"*", b"", target, target, [])
        return TargetReport(b"*", b"", target, None, [Violation(ASTERISK_FORM, 0, False)])
    if target[:1] == b"/":
        # RFC 9112 §3.2.1: origin-form = absolute-path [ "?" query ]
        return _origin(target, 0, [])
    return _absolute(target, host)


def _absolute(target: bytes, host: bytes | None) -> TargetReport:
    # RFC 9112 §3.2.2: absolute-form = absolute-URI; RFC 9110 §4.2.1/§4.2.2: http and https
    # URIs have an authority with a non-empty host.
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        # authority-form belongs to CONNECT (refused earlier); anything else is garbage.
        return TargetReport(target, b"", target, None, [Violation(BAD_FORM, 0, False)])
    scheme = m.group(1).lower()
    authority = m.group(2)
    rest = m.group(3)
    start = m.start(3)
    violations: list[Violation] = []
    if scheme not in _DEFAULT_PORT:
        violations.append(Violation(BAD_FORM, 0, False))
    at = authority.find(b"@")
    if at >= 0:
        # RFC 9110 §4.2.4: a recipient SHOULD treat userinfo in an http(s) URI as an error.
        violations.append(Violation(USERINFO, m.start(2) + at, False))
    elif not authority or HOST_RE.fullmatch(authority) is None:
        violations.append(Violation(BAD_FORM, m.start(2), False))
    elif host is not None and not same_authority(authority, host, scheme):
        # RFC 9112 §3.2.2 lets the target win over Host; a proxy that forwards both lets the
        # server pick the other one. HAProxy refuses the mismatch too.
        violations.append(Violation(HOST_MISMATCH, m.start(2), False))
    if rest[:1] != b"/":
        # RFC 9112 §3.2.1: an empty path is sent as "/" in origin-form.
        violations.append(Violation(EMPTY_PATH, start, True))
        rest = b"/" + rest
        start -= 1
    return _origin(rest, start, violations)


def _origin(target: bytes, base: int, violations: list[Violation]) -> TargetReport:
    """Check and normalize an origin-form target that starts `base` bytes into the original
    request-target (offsets are reported in the original's coordinates)."""
    hash_at = target.find(b"#")
    raw = target
    if hash_at >= 0:
        # RFC 9112 §3.2: the fragment is not part of the request-target.
        violations.append(Violation(FRAGMENT, base + hash_at, True))
        target = target[:hash_at]
    q = target.find(b"?")
    if q < 0:
        path, query, has_query = target, b"", False
    else:
        path, query, has_query = target[:q], target[q + 1 :], True
    _scan_path(path, base, violations)
    if has_query:
        _scan_query(query, base + q + 1, violations)

    resolved, climbed, dots = _resolve(_normal_path(path))
    if dots:
        at = _DOT_SEGMENT_AT.search(path)
        offset = base + (at.start() + (path[at.start()] in b"/\\") if at is not None else 0)
        if climbed:
            violations.append(Violation(ABOVE_ROOT, offset, False))
        else:
            violations.append(Violation(DOT_SEGMENT, offset, True))
    route = resolved
    if b"%" in path or b";" in path or b"\\" in path:
        strict, strict_climbed, strict_dots = _strict_reading(path)
        if strict_dots > dots:
            offset = base
            if strict_climbed and not climbed:
                violations.append(Violation(ABOVE_ROOT, offset, False))
            else:
                violations.append(Violation(HIDDEN_DOT_SEGMENT, offset, False))
            route = strict
        elif any(v.reason == DOUBLE_ENCODING for v in violations):
            route = strict

    normalized: bytes | None = None
    if all(v.fixable for v in violations):
        normalized = resolved + b"?" + query if has_query else resolved
    # Origin-form as received (for absolute-form: its path and query, '/' when empty).
    forward = raw
    return TargetReport(route, query, forward, normalized, violations)


def _scan_path(path: bytes, base: int, violations: list[Violation]) -> None:
    for m in _PATH_ODD.finditer(path):
        i = m.start()
        c = path[i]
        if c == 0x25:  # '%'
            if not _is_pct(path, i + 1):
                violations.append(Violation(BAD_PERCENT, base + i, False))
                continue
            value = int(path[i + 1 : i + 3], 16)
            if value == 0x25 and _is_pct(path, i + 3):
                # A literal '%' that itself starts a valid escape: a backend that decodes twice
                # reads another path than we route on (OWASP: double encoding).
                violations.append(Violation(DOUBLE_ENCODING, base + i, False))
            elif value == 0:
                violations.append(Violation(ENCODED_NUL, base + i, False))
            elif value < 0x20 or value == 0x7F:
                violations.append(Violation(ENCODED_CONTROL, base + i, False))
        elif c == 0x5C:  # '\'
            violations.append(Violation(BACKSLASH, base + i, True))
        else:
            # Controls and DEL cannot be made safe; the rest is percent-encoded by normalize.
            violations.append(Violation(BAD_CHAR, base + i, 0x20 <= c != 0x7F))


def _is_pct(data: bytes, i: int) -> bool:
    pair = data[i : i + 2]
    return len(pair) == 2 and pair[0] in _HEXDIGITS and pair[1] in _HEXDIGITS


def _scan_query(query: bytes, base: int, violations: list[Violation]) -> None:
    for m in _QUERY_ODD.finditer(query):
        i = m.start()
        c = query[i]
        if c == 0x25:  # '%'
            if not _is_pct(query, i + 1):
                violations.append(Violation(BAD_PERCENT, base + i, False))
            elif query[i + 1 : i + 3] == b"00":
                violations.append(Violation(ENCODED_NUL, base + i, False))
            # %0A and friends are legitimate in a query (a multi-line form value).
        else:
            violations.append(Violation(BAD_CHAR, base + i, False))  # the query is never rewritten


def _normal_path(path: bytes) -> bytes:
    """RFC 3986 §6.2.2.1-2: upper-case hex, decode unreserved; percent-encode bytes a path may
    not hold raw; read '\\' as '/' (as browsers do); merge runs of '/'. A malformed '%' is left
    alone (such a path is never forwarded normalized)."""
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and i + 2 < n and path[i + 1] in _HEXDIGITS and path[i + 2] in _HEXDIGITS:
            value = int(path[i + 1 : i + 3], 16)
            if value in _UNRESERVED_SET:
                out.append(value)
            else:
                out += b"%%%02X" % value
            i += 3
            continue
        if c == 0x5C:
            c = 0x2F
        if c == 0x2F and out[-1:] == b"/":
            i += 1
            continue
        if c in _PATH_BYTES or c == 0x25:
            out.append(c)
        else:
            out += b"%%%02X" % c
        i += 1
    return bytes(out)


_PATH_BYTES: Final = frozenset(PATH_CHARS)


def _resolve(path: bytes) -> tuple[bytes, bool, int]:
    """RFC 3986 §5.2.4 remove_dot_segments on a path whose '/' runs are merged. Returns the
    resolved path (clamped at the root), whether a '..' climbed above it, and how many
    dot-segments there were."""
    if b"/." not in path:
        return (path or b"/"), False, 0
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    climbed = False
    dots = 0
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == b".":
            dots += 1
            if i == last:
                out.append(b"")
        elif seg == b"..":
            dots += 1
            if out:
                out.pop()
            else:
                climbed = True
            if i == last:
                out.append(b"")
        else:
            out.append(seg)
    return b"/" + b"/".join(out), climbed, dots


def _strict_reading(path: bytes) -> tuple[bytes, bool, int]:
    """The path as the most liberal backend could read it: percent-decoded up to
    MAX_DECODE_ROUNDS times, '\\' and decoded %2F / %5C as separators, ';' parameters dropped
    from each segment (Tomcat: `/..;/`). Returns it resolved, whether it climbs, how many
    dot-segments it has."""
    for _ in range(MAX_DECODE_ROUNDS):
        if b"%" not in path:
            break
        decoded = _PCT.sub(lambda m: bytes((int(m.group(1), 16),)), path)
        if decoded == path:
            break
        path = decoded
    path = path.replace(b"\\", b"/")
    segments = [s.split(b";", 1)[0] for s in path.split(b"/")]
    merged = b"/" + b"/".join(s for s in segments if s)
    if path.endswith(b"/") and merged != b"/":
        merged += b"/"
    return _resolve(merged)


def normalize(target: bytes) -> bytes | None:
    """The normalized origin-form of `target`, or None when it cannot be made safe."""
    if is_clean(target):
        return target
    return analyze(b"GET", target, None).normalized
