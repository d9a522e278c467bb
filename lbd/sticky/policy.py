"""A backend's persistence policy: which server a request must go back to, and what its response
must tell the client. The engine calls `request` before picking a server and `response` when the
server's response head arrives; everything else (HTTP bytes, dates) is in cookie.py / table.py.

Rules (HAProxy's `cookie` and `stick on` semantics):
- The persistence cookie is read first; a stick table is asked only when the cookie named no
  reachable server. One outcome per request is counted on the backend: the first mechanism that
  found something decides (new, valid, redispatched, invalid, expired).
- A named server is reachable for persistence unless it is DOWN or in MAINT: DRAIN, weight 0 and
  backup servers still serve requests that name them (HAProxy's "persistent" traffic).
- insert: a Set-Cookie is added only when the client has no valid cookie for the server that
  answered (or its dates need refreshing); `indirect` removes the cookie from requests; the
  server's own cookie of that name is removed unless `preserve`. rewrite/prefix: the server's own
  Set-Cookie gets the server's value (prefix: `VALUE~APP`, stripped again on the way in).
- maxidle: a valid dated cookie is re-issued (`U`) once its last-seen date is older than
  maxidle / 4, so a session idle for less than 3/4 × maxidle never expires and a busy one costs
  one Set-Cookie per maxidle / 4 (HAProxy also refreshes the date lazily, not per request).
- Learned cookies (`table.learn_cookie`) are stored from responses only: the server that set the
  session id owns it. `src` entries are stored when a server answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.config.schema import CookieSticky, Sticky
from lbd.sticky import cookie as ck
from lbd.sticky.table import StickTable

if TYPE_CHECKING:
    from lbd.state import ServerState
    from lbd.stats.counters import BackendCounters

Headers = list[tuple[bytes, bytes]]


class Persist:
    """One request's persistence facts, from `request` to `response` and the access log."""

    __slots__ = (
        "client_flag",
        "cookie_server",
        "first",
        "headers",
        "last",
        "outcome",
        "server_flag",
        "table_key",
        "target",
    )

    def __init__(self) -> None:
        self.target: ServerState | None = None  # where the request must go (None: balance)
        self.cookie_server: ServerState | None = None  # the server a valid cookie names
        self.last = 0  # the valid cookie's dates (0: undated)
        self.first = 0
        self.headers: Headers | None = None  # request headers to forward, when changed
        self.table_key: bytes | None = None  # `src` key to store once a server answered
        self.client_flag = "-"  # HAProxy's client-side cookie letter; "-" without a cookie policy
        self.server_flag = "-"  # server-side letter
        self.outcome = ""  # what decided: a client-side letter, "" for new

    @property
    def flags(self) -> str:
        return self.client_flag + self.server_flag

    def redispatched(self) -> None:
        """The persistent server failed and the retry goes elsewhere (`redispatch`)."""
        if self.target is not None:
            self.target = None
            self.outcome = ck.CK_DOWN
            if self.client_flag == ck.CK_VALID:
                self.client_flag = ck.CK_DOWN

    def count(self, counters: BackendCounters) -> None:
        """Count the request's outcome once, when it ends (a redispatch may change it)."""
        outcome = self.outcome
        if outcome == ck.CK_VALID:
            counters.persist_valid += 1
        elif outcome == ck.CK_DOWN:
            counters.persist_redispatched += 1
        elif outcome == ck.CK_INVALID:
            counters.persist_invalid += 1
        elif outcome in (ck.CK_EXPIRED, ck.CK_OLD):
            counters.persist_expired += 1
        else:
            counters.persist_new += 1


def reachable(server: ServerState) -> bool:
    """May a request that names this server go there? Only DOWN and MAINT say no."""
    return server.up and server.admin != "maint"


class StickyPolicy:
    __slots__ = (
        "attrs",
        "by_name",
        "by_value",
        "cookie",
        "dated",
        "learn",
        "name",
        "refresh_after",
        "strip",
        "table",
        "value_of",
    )

    def __init__(
        self,
        backend: str,
        config: Sticky,
        servers: list[ServerState],
        table: StickTable | None,
    ) -> None:
        self.cookie: CookieSticky | None = config.cookie
        self.by_name = {s.name: s for s in servers}
        self.value_of: dict[ServerState, bytes] = {}
        for s in servers:
            override = s.config.cookie
            self.value_of[s] = override.encode() if override else ck.opaque_value(backend, s.name)
        self.by_value = {v: s for s, v in self.value_of.items()}
        c = self.cookie
        self.name = c.name.encode() if c is not None else b""
        self.dated = c is not None and (c.maxidle is not None or c.maxlife is not None)
        self.refresh_after = c.maxidle / 4 if c is not None and c.maxidle is not None else 0.0
        self.strip = ck.KEEP  # what happens to the cookie on its way to the server
        if c is not None and c.mode == "prefix":
            self.strip = ck.UNPREFIX
        elif c is not None and c.mode == "insert" and c.indirect:
            self.strip = ck.REMOVE
        self.attrs = (
            ck.attributes(c.path, c.domain, c.httponly, c.secure, c.samesite)
            if c is not None
            else b""
        )
        self.table = table
        t = config.table
        self.learn = t.learn_cookie.encode() if t is not None and t.learn_cookie else None

    # --- request ------------------------------------------------------------------------------

    def request(self, headers: Headers, peer_ip: bytes, now: int, mono: float) -> Persist:
        """Find the server the request names (cookie, then table); the engine counts the
        outcome when the request ends (`Persist.count`)."""
        p = Persist()
        outcome = ""
        if self.cookie is not None:
            outcome = self._from_cookie(p, headers, now)
        table = self.table
        if table is not None and self.learn is None:
            p.table_key = peer_ip  # stored (or refreshed) once a server answered
        if table is not None and p.target is None:
            key = peer_ip if self.learn is None else ck.find(headers, self.learn)
            if key:
                found = self._from_table(p, table.get(key, mono))
                outcome = outcome or found
        p.outcome = outcome
        return p

    def _from_cookie(self, p: Persist, headers: Headers, now: int) -> str:
        """Read the persistence cookie; the client letter, or "" when there is none."""
        c = self.cookie
        assert c is not None
        raw, p.headers = ck.take(headers, self.name, self.strip)
        if raw is None:
            p.client_flag = ck.CK_NONE
            return ""
        last = first = 0
        if c.mode == "prefix":
            value = raw.split(ck.PREFIX_SEP, 1)[0] if ck.PREFIX_SEP in raw else b""
        elif c.mode == "insert":
            value, last, first = ck.split_value(raw)
        else:
            value = raw
        server = self.by_value.get(value) if value else None
        if server is None:
            p.client_flag = ck.CK_INVALID
        elif self.dated and (letter := ck.stale(last, first, now, c.maxidle, c.maxlife)):
            p.client_flag = letter
        elif not reachable(server):
            p.client_flag = ck.CK_DOWN
        else:
            p.client_flag = ck.CK_VALID
            p.target = p.cookie_server = server
            p.last, p.first = last, first
        return p.client_flag

    def _from_table(self, p: Persist, name: str | None) -> str:
        """A table lookup's server; the outcome letter ("" for a miss, counted as new)."""
        if name is None:
            return ""
        server = self.by_name.get(name)
        if server is None:
            return ck.CK_INVALID  # stored for a server a reload removed
        if not reachable(server):
            return ck.CK_DOWN
        p.target = server
        return ck.CK_VALID

    # --- response -----------------------------------------------------------------------------

    def response(
        self, p: Persist, server: ServerState, headers: Headers, now: int, mono: float
    ) -> tuple[Headers, bytes]:
        """(headers to send, extra header lines) for a response from `server`."""
        table = self.table
        if table is not None:
            if p.table_key is not None:
                table.put(p.table_key, server.name, mono)
            elif self.learn is not None:
                self._learn(table, server, headers, mono)
        c = self.cookie
        if c is None:
            return headers, b""
        p.server_flag = ck.SRV_NONE
        name = self.name
        own = [i for i, (n, v) in enumerate(headers) if len(n) == 10 and _is_set_cookie(n, v, name)]
        valid_here = p.cookie_server is server
        if c.mode != "insert":
            if not own:
                return headers, b""
            if c.indirect and valid_here and c.preserve:
                p.server_flag = ck.SRV_PROVIDED
                return headers, b""
            headers = self._rewrite(p, server, headers, own, c.indirect and valid_here)
            if c.nocache and p.server_flag == ck.SRV_REWRITTEN:
                return _no_cache(headers, b"")
            return headers, b""
        if own:
            if c.preserve:
                p.server_flag = ck.SRV_PROVIDED
                return headers, b""
            headers = [h for i, h in enumerate(headers) if i not in own]
            p.server_flag = ck.SRV_DELETED
        if not valid_here:
            p.server_flag = ck.SRV_INSERTED
            first = now
        elif self.dated and (
            not p.last or (self.refresh_after and now - p.last >= self.refresh_after)
        ):
            p.server_flag = ck.SRV_UPDATED
            first = p.first or now
        else:
            return headers, b""
        value = self.value_of[server]
        if self.dated:
            value = ck.encode_value(value, now, first)
        extra = b"Set-Cookie: " + self.name + b"=" + value + self.attrs + b"\r\n"
        if c.nocache:
            headers, extra = _no_cache(headers, extra)
        return headers, extra

    def _rewrite(
        self, p: Persist, server: ServerState, headers: Headers, own: list[int], drop: bool
    ) -> Headers:
        """rewrite/prefix: give the server's own cookie the server's value (or drop it when the
        client already holds a valid one and `indirect` says not to repeat it)."""
        if drop:
            p.server_flag = ck.SRV_DELETED
            return [h for i, h in enumerate(headers) if i not in own]
        p.server_flag = ck.SRV_REWRITTEN
        value = self.value_of[server]
        out = list(headers)
        prefix = self.cookie is not None and self.cookie.mode == "prefix"
        for i in own:
            name, set_cookie = out[i]
            new = value + ck.PREFIX_SEP + ck.set_cookie_value(set_cookie) if prefix else value
            out[i] = (name, ck.with_value(set_cookie, new))
        return out

    def _learn(self, table: StickTable, server: ServerState, headers: Headers, mono: float) -> None:
        """Remember which server set the application's session cookie."""
        learn = self.learn
        assert learn is not None
        for name, value in headers:
            if _is_set_cookie(name, value, learn):
                session = ck.set_cookie_value(value)
                if session:
                    table.put(session, server.name, mono)


def _is_set_cookie(name: bytes, value: bytes, cookie: bytes) -> bool:
    return (
        len(name) == 10
        and name.lower() == b"set-cookie"
        and cookie in value
        and ck.set_cookie_name(value) == cookie
    )


def _no_cache(headers: Headers, extra: bytes) -> tuple[Headers, bytes]:
    """`nocache`: the response carrying our cookie must not be stored by a shared cache."""
    for i, (name, value) in enumerate(headers):
        if len(name) == 13 and name.lower() == b"cache-control":
            out = list(headers)
            out[i] = (name, ck.private_cache_control(value))
            return out, extra
    return headers, extra + b"Cache-Control: private\r\n"
