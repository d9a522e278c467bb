"""A frontend's rules and modules, compiled: request head → action, and → module name.

Rules: first match wins for both. Header edits (`set_header`, `del_header`) apply and fall
through to the next rule; every other action ends the walk. Actions that answer locally
(deny, redirect, return) carry their response bytes, built once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lbd.config.schema import Frontend, Rule
from lbd.http import wire
from lbd.http.head import RequestHead
from lbd.routing.matchers import IPAddress, Predicate, compile_matcher

OTHER_MODULE: Final = "other"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """An answer lbd gives itself, built once per configuration (it closes the connection)."""

    status: int
    response: bytes
    denied: bool


@dataclass(frozen=True, slots=True)
class CompiledRule:
    predicate: Predicate
    backend: str | None
    answer: LocalAnswer | None
    set_headers: tuple[tuple[bytes, bytes], ...]
    del_headers: frozenset[bytes]


def _answer(rule: Rule) -> LocalAnswer | None:
    if rule.deny is not None:
        return LocalAnswer(rule.deny, wire.error_response(rule.deny), denied=True)
    if rule.redirect is not None:
        r = rule.redirect
        location = ((b"Location", r.location.encode()),)
        return LocalAnswer(
            r.code, wire.simple_response(r.code, b"", b"text/plain", location), denied=False
        )
    if rule.return_ is not None:
        ret = rule.return_
        response = wire.simple_response(ret.status, ret.body.encode(), ret.content_type.encode())
        return LocalAnswer(ret.status, response, denied=False)
    return None


class Router:
    __slots__ = ("_modules", "_rules", "default_backend", "needs_src")

    def __init__(self, frontend: Frontend) -> None:
        self.default_backend = frontend.default_backend
        self._rules = tuple(
            CompiledRule(
                compile_matcher(r.when),
                r.use_backend,
                _answer(r),
                tuple((n.encode(), v.encode()) for n, v in r.set_header),
                frozenset(n.lower().encode() for n in r.del_header),
            )
            for r in frontend.rules
        )
        self._modules = tuple((compile_matcher(m.match), m.name) for m in frontend.modules)
        # The client address object is only built per request when some matcher reads it.
        matchers = [r.when for r in frontend.rules] + [m.match for m in frontend.modules]
        self.needs_src = any(m.src is not None for m in matchers)

    def route(self, head: RequestHead, src: IPAddress | None) -> str | LocalAnswer:
        """The backend name to use, or the local answer to give."""
        for rule in self._rules:
            if not rule.predicate(head, src):
                continue
            if rule.answer is not None:
                return rule.answer
            if rule.set_headers or rule.del_headers:
                _edit_headers(head, rule)
            if rule.backend is not None:
                return rule.backend
        return self.default_backend

    def module(self, head: RequestHead, src: IPAddress | None) -> str:
        for predicate, name in self._modules:
            if predicate(head, src):
                return name
        return OTHER_MODULE


def _edit_headers(head: RequestHead, rule: CompiledRule) -> None:
    drop = rule.del_headers | {n.lower() for n, _ in rule.set_headers}
    head.headers = [(n, v) for n, v in head.headers if n.lower() not in drop]
    head.headers.extend(rule.set_headers)
    head.raw = None  # the bytes as received no longer say what goes to the server
    head.needs_filter = True  # a rule's own hop-by-hop or X-Forwarded-* lines are dropped too
