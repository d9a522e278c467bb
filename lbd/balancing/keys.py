"""Hash keys for `source`, `uri`, `hdr(NAME)` and `cookie(NAME)`: extracted by the caller.

Rules: the algorithms never see HTTP (HAProxy's rule); the exchange calls the extractor built
once per backend (`key_extractor(balance)`) with the request head and the client address, and
passes the result to `pick`. None means "no key" and the algorithm falls back to round-robin,
as HAProxy does when the header or cookie is absent or empty. Pure functions, no I/O; each
looks at what it needs and no more (one pass over the headers at most).

- `source`: the client address as text (`peer_ip`, e.g. b"10.0.0.7"), so a client keeps its
  server. Behind another proxy every client shares one address: use `hdr(X-Forwarded-For)`.
- `uri`: the path, without the query unless `uri_whole`; `uri_depth: N` keeps the first N
  directories (`/a/b/c`, depth 2 → `/a/b`), HAProxy's `depth`, counted in slashes.
- `hdr(NAME)`: the value of the first NAME header (name compared case-insensitively).
- `cookie(NAME)`: the value of cookie NAME in the first Cookie header that has it.
"""

from __future__ import annotations

from collections.abc import Callable

from lbd.config.schema import Balance
from lbd.http.head import RequestHead

KeyExtractor = Callable[[RequestHead, bytes], bytes | None]


def key_extractor(balance: Balance) -> KeyExtractor | None:
    """The extractor for a backend's `balance:`, or None when the algorithm takes no key."""
    algorithm = balance.algorithm
    if algorithm == "source":
        return source_key
    if algorithm == "uri":
        whole, depth = balance.uri_whole, balance.uri_depth
        return lambda head, peer: uri_key(head, whole, depth)
    if algorithm == "hdr" and balance.arg:
        name = balance.arg.lower().encode()
        return lambda head, peer: header_key(head, name)
    if algorithm == "cookie" and balance.arg:
        cookie = balance.arg.encode()
        return lambda head, peer: cookie_key(head, cookie)
    return None


def source_key(head: RequestHead, peer_ip: bytes) -> bytes | None:
    return peer_ip if peer_ip and peer_ip != b"-" else None


def uri_key(head: RequestHead, whole: bool, depth: int) -> bytes | None:
    """The path (and query with `whole`), cut after `depth` directories when depth > 0."""
    path = head.path
    if depth > 0:
        # HAProxy stops at the (depth + 1)-th slash: depth 1 keeps "/a" of "/a/b/c".
        end = -1
        for _ in range(depth + 1):
            end = path.find(b"/", end + 1)
            if end < 0:
                break
        else:
            path = path[:end]
            return path or None
    if whole and head.query:
        return path + b"?" + head.query
    return path or None


def header_key(head: RequestHead, lower_name: bytes) -> bytes | None:
    """The first header named `lower_name` (lower-case bytes); None if absent or empty."""
    n = len(lower_name)
    for name, value in head.headers:
        if len(name) == n and name.lower() == lower_name:
            value = value.strip()
            return value or None
    return None


def cookie_key(head: RequestHead, cookie: bytes) -> bytes | None:
    """The value of cookie `cookie` (case-sensitive, RFC 6265) in the Cookie headers."""
    for name, value in head.headers:
        if len(name) == 6 and name.lower() == b"cookie":
            for pair in value.split(b";"):
                k, eq, v = pair.strip().partition(b"=")
                if eq and k == cookie:
                    v = v.strip().strip(b'"')
                    return v or None
    return None
