"""The persistence cookie, sans-IO: opaque values, dates, Cookie / Set-Cookie surgery, log flags.

Rules:
- Pure functions over bytes; no clock (callers pass `now`, wall-clock seconds: a cookie outlives
  the process, so monotonic time would not do), no I/O, no logging (cookies are never logged).
- A server's value is opaque: BLAKE2b of "backend/server" (stable across processes, restarts and
  workers; never the address), unless the server's `cookie:` overrides it (Traefik does the same).
- With `maxidle`/`maxlife` the value carries two dates as HAProxy's does: `VALUE|LAST|FIRST`,
  hexadecimal Unix seconds. Dates are not signed: a client can only choose among known servers
  with them, as it can by deleting the cookie.
- Cookie headers (RFC 6265 §4.2.1) are `name=value` pairs separated by `;`; names are
  case-sensitive. Set-Cookie (§4.1.1): `name=value` then attributes after the first `;`.
"""

from __future__ import annotations

import hashlib
from typing import Final

# HAProxy's log letters (3rd and 4th characters of the termination state).
# Client side: what the request's cookie said.
CK_NONE: Final = "N"  # no persistence cookie
CK_INVALID: Final = "I"  # names no known server (forged, garbage, or a removed server)
CK_DOWN: Final = "D"  # names a server that is DOWN or in MAINT: redispatched
CK_VALID: Final = "V"  # names a usable server: sent there
CK_EXPIRED: Final = "E"  # last-seen date older than maxidle: ignored
CK_OLD: Final = "O"  # first-seen date older than maxlife: ignored
# Server side: what lbd did to the response's cookie.
SRV_NONE: Final = "N"  # none set by the server, none inserted
SRV_INSERTED: Final = "I"  # lbd inserted one
SRV_UPDATED: Final = "U"  # lbd refreshed the dates of a valid one
SRV_PROVIDED: Final = "P"  # the server set it and it went out as is (preserve)
SRV_REWRITTEN: Final = "R"  # the server set it and lbd rewrote it (rewrite, prefix)
SRV_DELETED: Final = "D"  # the server set it and lbd removed it

DATE_SEP: Final = b"|"
PREFIX_SEP: Final = b"~"
# A date more than this far in the future is a forgery or a clock jump (HAProxy uses one day).
FUTURE_SLACK: Final = 86400


def opaque_value(backend: str, server: str) -> bytes:
    """The default cookie value of a server: 16 hex digits, derived from its name only."""
    return hashlib.blake2b(f"{backend}/{server}".encode(), digest_size=8).hexdigest().encode()


def encode_value(value: bytes, last: int, first: int) -> bytes:
    """`VALUE|LAST|FIRST` (dates in hexadecimal seconds)."""
    return b"%s|%x|%x" % (value, last, first)


def split_value(raw: bytes) -> tuple[bytes, int, int]:
    """(value, last, first) of a cookie value; dates are 0 when absent or unreadable (an
    unreadable date makes the whole value unknown: the server part is returned empty)."""
    if DATE_SEP not in raw:
        return raw, 0, 0
    parts = raw.split(DATE_SEP)
    if len(parts) != 3 or not all(0 < len(p) <= 12 for p in parts[1:]):
        return b"", 0, 0
    try:
        return parts[0], int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return b"", 0, 0


def stale(
    last: int, first: int, now: int, maxidle: float | None, maxlife: float | None
) -> str | None:
    """CK_OLD / CK_EXPIRED when the dates say the cookie must be ignored, else None. A cookie
    without dates is accepted (HAProxy does the same: it gets dated on the way back)."""
    if maxlife is not None and first and (now - first > maxlife or first - now > FUTURE_SLACK):
        return CK_OLD
    if maxidle is not None and last and (now - last > maxidle or last - now > FUTURE_SLACK):
        return CK_EXPIRED
    return None


# --- Cookie request headers ------------------------------------------------------------------


def find(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first cookie `name` in the Cookie headers (quotes removed), or None."""
    for hname, value in headers:
        if len(hname) == 6 and hname.lower() == b"cookie" and name in value:
            for pair in value.split(b";"):
                k, eq, v = pair.partition(b"=")
                if eq and k.strip() == name:
                    return v.strip().strip(b'"')
    return None


# What `take` does to the persistence cookie on its way to the server.
KEEP: Final = 0  # forwarded as is (insert without indirect, rewrite)
REMOVE: Final = 1  # removed (insert + indirect)
UNPREFIX: Final = 2  # `name=SERVER~APP` becomes `name=APP` (prefix)


def take(
    headers: list[tuple[bytes, bytes]], name: bytes, mode: int
) -> tuple[bytes | None, list[tuple[bytes, bytes]] | None]:
    """One pass over the request headers: (the first value of cookie `name` or None, the headers
    to forward or None when unchanged). A Cookie header left empty is dropped."""
    found: bytes | None = None
    out: list[tuple[bytes, bytes]] | None = None
    for i, item in enumerate(headers):
        hname, value = item
        if len(hname) == 6 and name in value and hname.lower() == b"cookie":
            new, val = _scan(value, name, mode)
            if found is None:
                found = val
            if new is not value:
                if out is None:
                    out = headers[:i]
                if new:
                    out.append((hname, new))
                continue
        if out is not None:
            out.append(item)
    return found, out


def _scan(value: bytes, name: bytes, mode: int) -> tuple[bytes, bytes | None]:
    """(the Cookie header value to forward, the cookie's value) for one Cookie header; the same
    `value` object when nothing changes."""
    found: bytes | None = None
    kept: list[bytes] = []
    changed = False
    for pair in value.split(b";"):
        k, eq, v = pair.partition(b"=")
        if eq and k.strip() == name:
            if found is None:
                found = v.strip().strip(b'"')
            if mode == REMOVE:
                changed = True
                continue
            if mode == UNPREFIX and PREFIX_SEP in v:
                pair = k.strip() + b"=" + v.split(PREFIX_SEP, 1)[1].strip()
                changed = True
        kept.append(pair.strip())
    if not changed:
        return value, found
    return b"; ".join(p for p in kept if p), found


# --- Set-Cookie response headers -------------------------------------------------------------


def set_cookie_name(value: bytes) -> bytes:
    """The cookie name a Set-Cookie value sets."""
    return value.partition(b";")[0].partition(b"=")[0].strip()


def set_cookie_value(value: bytes) -> bytes:
    """The cookie value a Set-Cookie value sets (quotes removed)."""
    return value.partition(b";")[0].partition(b"=")[2].strip().strip(b'"')


def with_value(set_cookie: bytes, new_value: bytes) -> bytes:
    """A Set-Cookie value with its cookie value replaced, attributes kept."""
    pair, semi, attrs = set_cookie.partition(b";")
    return pair.partition(b"=")[0].strip() + b"=" + new_value + semi + attrs


def attributes(
    path: str | None,
    domain: str | None,
    httponly: bool,
    secure: bool,
    samesite: str | None,
) -> bytes:
    """The attribute suffix of an inserted cookie, built once per configuration. HAProxy sets
    `path=/` when no path is configured, so one cookie covers the whole application."""
    parts = [b"; path=" + (path or "/").encode()]
    if domain:
        parts.append(b"; domain=" + domain.encode())
    if httponly:
        parts.append(b"; HttpOnly")
    if secure:
        parts.append(b"; Secure")
    if samesite:
        parts.append(b"; SameSite=" + samesite.encode())
    return b"".join(parts)


def private_cache_control(value: bytes) -> bytes:
    """`nocache`: a Cache-Control value that forbids shared caches, other directives kept
    (`public` would contradict `private`, so it goes)."""
    directives = [d.strip() for d in value.split(b",") if d.strip()]
    lowered = [d.lower() for d in directives]
    if b"private" in lowered or b"no-store" in lowered:
        return value
    kept = [d for d, low in zip(directives, lowered, strict=True) if low != b"public"]
    return b", ".join([b"private", *kept])
