"""Compile `when:` matchers (and module entries) into plain predicates, once per config.

Rules: a predicate takes the request head and the client's IP address object and returns a
bool; several keys in one matcher must all hold. Host compares case-insensitively without the
port. Regexes and CIDRs are compiled here, never per request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from lbd.config.schema import HeaderMatch, Matcher, QueryMatch
from lbd.http.head import RequestHead

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Predicate = Callable[[RequestHead, IPAddress | None], bool]


def host_without_port(host: bytes | None) -> bytes:
    if not host:
        return b""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host


def _header_predicate(m: HeaderMatch) -> Predicate:
    lname = m.name.lower().encode("latin-1")
    rx = re.compile(m.regex.encode()) if m.regex is not None else None
    equals = m.equals.encode() if m.equals is not None else None

    def check(head: RequestHead, src: IPAddress | None) -> bool:
        values = [v for n, v in head.headers if n.lower() == lname]
        if m.present is not None:
            return bool(values) == m.present
        if equals is not None:
            return any(v.strip() == equals for v in values)
        if rx is not None:
            return any(rx.search(v) for v in values)
        return bool(values)

    return check


def _query_predicate(m: QueryMatch) -> Predicate:
    def check(head: RequestHead, src: IPAddress | None) -> bool:
        if not head.query:
            return False
        for name, value in parse_qsl(head.query.decode("latin-1"), keep_blank_values=True):
            if name == m.name and (m.equals is None or value == m.equals):
                return True
        return False

    return check


def compile_matcher(m: Matcher) -> Predicate:
    checks: list[Predicate] = []
    if m.path is not None:
        path = m.path.encode()
        checks.append(lambda h, s: h.path == path)
    if m.path_prefix is not None:
        prefix = m.path_prefix.encode()
        checks.append(lambda h, s: h.path.startswith(prefix))
    if m.path_regex is not None:
        rx = re.compile(m.path_regex.encode())
        checks.append(lambda h, s: rx.search(h.path) is not None)
    if m.host is not None:
        host = m.host.lower().encode()
        checks.append(lambda h, s: host_without_port(h.host) == host)
    if m.method is not None:
        method = m.method.upper().encode()
        checks.append(lambda h, s: h.method == method)
    if m.header is not None:
        checks.append(_header_predicate(m.header))
    if m.query is not None:
        checks.append(_query_predicate(m.query))
    if m.src is not None:
        net = ipaddress.ip_network(m.src, strict=False)
        checks.append(lambda h, s: s is not None and s in net)

    if not checks:
        return lambda h, s: True
    if len(checks) == 1:
        return checks[0]
    return lambda h, s: all(c(h, s) for c in checks)
