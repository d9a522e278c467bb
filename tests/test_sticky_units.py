"""Session persistence, sans-IO: cookie values and header surgery, the stick table as a state
machine, the per-backend policy driven request by request, and the `sticky` configuration.

Rules: no sockets here (tests/test_sticky_e2e.py drives a real lbd); time is passed in, so
expiry is tested by moving a number, never by sleeping.
"""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from lbd.config.load import load_config_text
from lbd.config.schema import Backend, CookieSticky, Sticky
from lbd.config.schema import StickTable as StickTableConfig
from lbd.errors import ConfigErrors
from lbd.runtime import build_runtime
from lbd.state import ServerState
from lbd.stats.counters import BackendCounters
from lbd.sticky import cookie as ck
from lbd.sticky.policy import Persist, StickyPolicy
from lbd.sticky.table import StickTable

NOW = 1_800_000_000  # wall-clock seconds for cookie dates


# --- cookie.py ----------------------------------------------------------------------------------


def test_opaque_value_is_stable_and_hides_the_address() -> None:
    a = ck.opaque_value("app", "s1")
    assert a == ck.opaque_value("app", "s1")
    assert a != ck.opaque_value("app", "s2") != ck.opaque_value("other", "s1")
    assert len(a) == 16 and all(c in b"0123456789abcdef" for c in a)


def test_dated_values_round_trip_and_garbage_is_unknown() -> None:
    raw = ck.encode_value(b"abc", NOW, NOW - 60)
    assert raw == b"abc|%x|%x" % (NOW, NOW - 60)
    assert ck.split_value(raw) == (b"abc", NOW, NOW - 60)
    assert ck.split_value(b"abc") == (b"abc", 0, 0)
    for garbage in (b"abc|zz|1", b"abc|1", b"abc||", b"abc|1|2|3", b"abc|1234567890abc|1"):
        assert ck.split_value(garbage) == (b"", 0, 0), garbage


@pytest.mark.parametrize(
    ("last", "first", "expected"),
    [
        (NOW - 10, NOW - 10, None),
        (NOW - 301, NOW - 400, ck.CK_EXPIRED),  # idle longer than maxidle 300
        (NOW - 10, NOW - 3601, ck.CK_OLD),  # older than maxlife 3600, though recently seen
        (NOW + 2 * 86400, NOW, ck.CK_EXPIRED),  # a date far in the future is forged
        (0, 0, None),  # undated: accepted, dated on the way back
    ],
)
def test_stale_dates(last: int, first: int, expected: str | None) -> None:
    assert ck.stale(last, first, NOW, 300.0, 3600.0) == expected


def test_find_and_strip_request_cookies() -> None:
    headers = [
        (b"Host", b"ehr"),
        (b"Cookie", b"JSESSIONID=j1; SERVERID=abc"),
        (b"cookie", b"SERVERID=other"),
    ]
    assert ck.find(headers, b"SERVERID") == b"abc"
    assert ck.find(headers, b"serverid") is None  # names are case-sensitive
    assert ck.find([(b"Cookie", b'SERVERID="q"')], b"SERVERID") == b"q"
    assert ck.take(headers, b"SERVERID", ck.REMOVE) == (
        b"abc",
        [(b"Host", b"ehr"), (b"Cookie", b"JSESSIONID=j1")],  # the emptied header is gone
    )
    assert ck.take(headers, b"SERVERID", ck.KEEP) == (b"abc", None)  # None: unchanged
    assert ck.take(headers, b"NOPE", ck.REMOVE) == (None, None)
    prefixed = [(b"Cookie", b"a=1; JSESSIONID=s1~app42; b=2"), (b"Accept", b"*/*")]
    assert ck.take(prefixed, b"JSESSIONID", ck.UNPREFIX) == (
        b"s1~app42",
        [(b"Cookie", b"a=1; JSESSIONID=app42; b=2"), (b"Accept", b"*/*")],
    )
    # a name that merely contains ours is another cookie
    assert ck.take([(b"Cookie", b"XSERVERID=1; SERVERID=2")], b"SERVERID", ck.REMOVE) == (
        b"2",
        [(b"Cookie", b"XSERVERID=1")],
    )


def test_set_cookie_surgery_and_cache_control() -> None:
    sc = b"JSESSIONID=abc; Path=/; HttpOnly"
    assert ck.set_cookie_name(sc) == b"JSESSIONID"
    assert ck.set_cookie_value(sc) == b"abc"
    assert ck.with_value(sc, b"s1~abc") == b"JSESSIONID=s1~abc; Path=/; HttpOnly"
    attrs = ck.attributes(None, "ehr.example", True, True, "Lax")
    assert attrs == b"; path=/; domain=ehr.example; HttpOnly; Secure; SameSite=Lax"
    assert ck.private_cache_control(b"max-age=60, public") == b"private, max-age=60"
    assert ck.private_cache_control(b"no-store") == b"no-store"
    assert ck.private_cache_control(b"Private") == b"Private"


# --- table.py: a state machine ------------------------------------------------------------------


def test_table_lru_eviction_keeps_the_recently_used() -> None:
    t = StickTable(size=3, expire=100.0)
    t.put(b"a", "s1", 0.0)
    t.put(b"b", "s2", 1.0)
    t.put(b"c", "s1", 2.0)
    assert t.get(b"a", 3.0) == "s1"  # `a` becomes the most recent
    t.put(b"d", "s2", 4.0)  # full: the least recently used (`b`) goes
    assert len(t) == 3 and t.evicted == 1
    assert t.get(b"b", 5.0) is None
    assert [k for k, _, _ in t.items()] == [b"c", b"a", b"d"]
    t.put(b"c", "s3", 6.0)  # overwrite moves and rebinds, evicts nothing
    assert t.get(b"c", 6.0) == "s3" and t.evicted == 1


def test_table_expiry_on_lookup_and_by_sweep() -> None:
    t = StickTable(size=10, expire=10.0)
    t.put(b"a", "s1", 0.0)
    t.put(b"b", "s1", 5.0)
    t.put(b"c", "s1", 8.0)
    assert t.get(b"a", 10.0) == "s1"  # exactly `expire` old: still valid; refreshed to 10
    assert t.get(b"b", 15.5) is None and t.expired == 1  # 10.5 s idle: gone
    assert t.sweep(18.5) == 1  # `c` (8.0) expired; `a` (10.0) is live and stops the sweep
    assert [k for k, _, _ in t.items()] == [b"a"]
    assert t.sweep(100.0, budget=0) == 0  # the budget bounds the work
    assert t.sweep(100.0) == 1 and len(t) == 0 and t.expired == 3


def test_table_refuses_illegal_sizes_and_resize_keeps_newest() -> None:
    with pytest.raises(ValueError):
        StickTable(size=0, expire=1.0)
    t = StickTable(size=4, expire=10.0)
    for i, k in enumerate((b"a", b"b", b"c", b"d")):
        t.put(k, "s1", float(i))
    with pytest.raises(ValueError):
        t.resize(0, 10.0)
    assert len(t) == 4 and t.size == 4  # the illegal resize changed nothing
    t.resize(2, 20.0)
    assert [k for k, _, _ in t.items()] == [b"c", b"d"] and t.expire == 20.0


# --- policy.py: request by request --------------------------------------------------------------


def _servers(*names: str, backup: str = "") -> list[ServerState]:
    lines = [
        "frontends: {fe: {bind: 127.0.0.1:1, default_backend: app}}",
        "backends:",
        "  app:",
        "    servers:",
    ]
    for i, n in enumerate(names):
        flag = "true" if n == backup else "false"
        lines.append(f"      - {{name: {n}, address: 127.0.0.1:{9000 + i}, backup: {flag}}}")
    cfg = load_config_text("\n".join(lines) + "\n", "t.yaml")
    loop = asyncio.new_event_loop()
    try:
        rt = build_runtime(cfg, None, loop)
    finally:
        loop.close()
    return rt.backends["app"].servers


def _policy(
    servers: list[ServerState], table: StickTable | None = None, **cookie: object
) -> StickyPolicy:
    sticky = Sticky(
        cookie=CookieSticky(**cookie) if cookie else None,  # type: ignore[arg-type]
        table=StickTableConfig() if table is not None else None,
    )
    return StickyPolicy("app", sticky, servers, table)


def ask(
    pol: StickyPolicy,
    headers: list[tuple[bytes, bytes]],
    ip: bytes,
    c: BackendCounters,
    now: int,
    mono: float,
) -> Persist:
    """One request through the policy, its outcome counted as the engine does at the end."""
    p = pol.request(headers, ip, now, mono)
    p.count(c)
    return p


def _cookie_of(extra: bytes) -> bytes:
    """The value of the Set-Cookie line in `extra`."""
    line = next(x for x in extra.split(b"\r\n") if x.startswith(b"Set-Cookie: "))
    return line.removeprefix(b"Set-Cookie: ").split(b";")[0].split(b"=", 1)[1]


def test_insert_first_visit_then_valid_then_down() -> None:
    s1, s2 = _servers("s1", "s2")
    pol = _policy([s1, s2], mode="insert", indirect=True, nocache=True, httponly=True)
    c = BackendCounters()
    p = ask(pol, [], b"10.0.0.1", c, NOW, 0.0)
    assert p.target is None and p.client_flag == "N" and c.persist_new == 1
    _headers, extra = pol.response(p, s2, [(b"Content-Length", b"0")], NOW, 0.0)
    value = _cookie_of(extra)
    assert value == ck.opaque_value("app", "s2")
    assert b"; path=/; HttpOnly\r\n" in extra and b"Cache-Control: private\r\n" in extra
    assert p.flags == "NI"
    jar = [(b"Cookie", b"SERVERID=" + value + b"; other=1")]
    p = ask(pol, jar, b"10.0.0.1", c, NOW, 0.0)
    assert p.target is s2 and p.flags == "V-" and c.persist_valid == 1
    assert p.headers == [(b"Cookie", b"other=1")]  # indirect: the server never sees it
    _, extra = pol.response(p, s2, [], NOW, 0.0)
    assert extra == b"" and p.flags == "VN"
    p = pol.request(jar, b"10.0.0.1", NOW, 0.0)
    p.redispatched()  # s2 refused the connection: the retry goes elsewhere
    p.count(c)
    assert p.target is None and p.client_flag == "D" and c.persist_redispatched == 1
    assert c.persist_valid == 1  # one outcome per request: the redispatched one is not valid
    s2.up = False
    p = ask(pol, jar, b"10.0.0.1", c, NOW, 0.0)
    assert p.target is None and p.client_flag == "D" and c.persist_redispatched == 2
    _, extra = pol.response(p, s1, [], NOW, 0.0)
    assert _cookie_of(extra) == ck.opaque_value("app", "s1") and p.flags == "DI"


def test_drain_weight_zero_backup_and_maint() -> None:
    s1, s2, spare = _servers("s1", "s2", "spare", backup="spare")
    pol = _policy([s1, s2, spare], mode="insert")
    c = BackendCounters()

    def target(server: ServerState) -> ServerState | None:
        jar = [(b"Cookie", b"SERVERID=" + pol.value_of[server])]
        return ask(pol, jar, b"ip", c, NOW, 0.0).target

    s1.admin = "drain"
    s2.set_weight(0)
    assert target(s1) is s1 and target(s2) is s2 and target(spare) is spare
    s1.admin = "maint"
    assert target(s1) is None and c.persist_redispatched == 1


def test_forged_cookie_is_invalid_and_counted() -> None:
    (s1,) = _servers("s1")
    pol = _policy([s1], mode="insert")
    c = BackendCounters()
    for junk in (b"deadbeefdeadbeef", b"", b"%00%ff", b"x" * 300):
        p = ask(pol, [(b"Cookie", b"SERVERID=" + junk)], b"ip", c, NOW, 0.0)
        assert p.target is None and p.client_flag == "I"
    assert c.persist_invalid == 4


def test_maxidle_refresh_and_expiry() -> None:
    (s1,) = _servers("s1")
    pol = _policy([s1], mode="insert", maxidle=400.0, maxlife=3600.0)
    c = BackendCounters()
    p = ask(pol, [], b"ip", c, NOW, 0.0)
    _, extra = pol.response(p, s1, [], NOW, 0.0)
    value = _cookie_of(extra)
    assert ck.split_value(value) == (pol.value_of[s1], NOW, NOW)
    jar = [(b"Cookie", b"SERVERID=" + value)]
    p = ask(pol, jar, b"ip", c, NOW + 50, 0.0)  # under maxidle/4 = 100 s: no refresh
    assert pol.response(p, s1, [], NOW + 50, 0.0)[1] == b"" and p.flags == "VN"
    p = ask(pol, jar, b"ip", c, NOW + 150, 0.0)  # past maxidle/4: dates refreshed (U)
    _, extra = pol.response(p, s1, [], NOW + 150, 0.0)
    assert p.flags == "VU" and ck.split_value(_cookie_of(extra)) == (
        pol.value_of[s1],
        NOW + 150,
        NOW,
    )
    p = ask(pol, jar, b"ip", c, NOW + 401, 0.0)  # the old value, idle past maxidle: E
    assert p.target is None and p.client_flag == "E" and c.persist_expired == 1
    _, extra = pol.response(p, s1, [], NOW + 401, 0.0)
    assert p.flags == "EI"
    assert ck.split_value(_cookie_of(extra))[1:] == (NOW + 401, NOW + 401)  # a new session


def test_insert_removes_or_preserves_the_servers_own_cookie() -> None:
    (s1,) = _servers("s1")
    own = [(b"Set-Cookie", b"SERVERID=logout; Max-Age=0"), (b"Set-Cookie", b"JSESSIONID=j")]
    jar = [(b"Cookie", b"SERVERID=" + ck.opaque_value("app", "s1"))]
    pol = _policy([s1], mode="insert")
    p = ask(pol, jar, b"ip", BackendCounters(), NOW, 0.0)
    headers, extra = pol.response(p, s1, own, NOW, 0.0)
    assert headers == [(b"Set-Cookie", b"JSESSIONID=j")] and extra == b"" and p.flags == "VD"
    pol = _policy([s1], mode="insert", preserve=True)
    p = ask(pol, jar, b"ip", BackendCounters(), NOW, 0.0)
    headers, extra = pol.response(p, s1, own, NOW, 0.0)
    assert headers == own and extra == b"" and p.flags == "VP"


def test_rewrite_and_prefix_modes() -> None:
    s1, s2 = _servers("s1", "s2")
    app = [(b"Set-Cookie", b"JSESSIONID=abc; Path=/ehr")]
    pol = _policy([s1, s2], mode="prefix", name="JSESSIONID")
    p = ask(pol, [], b"ip", BackendCounters(), NOW, 0.0)
    headers, _ = pol.response(p, s2, app, NOW, 0.0)
    v2 = ck.opaque_value("app", "s2")
    assert headers == [(b"Set-Cookie", b"JSESSIONID=" + v2 + b"~abc; Path=/ehr")]
    assert p.flags == "NR"
    p = ask(pol, [(b"Cookie", b"JSESSIONID=" + v2 + b"~abc")], b"ip", BackendCounters(), NOW, 0)
    assert p.target is s2 and p.headers == [(b"Cookie", b"JSESSIONID=abc")]
    pol = _policy([s1, s2], mode="rewrite", name="SRV")
    p = ask(pol, [], b"ip", BackendCounters(), NOW, 0.0)
    headers, _ = pol.response(p, s1, [(b"Set-Cookie", b"SRV=x; Path=/")], NOW, 0.0)
    assert headers == [(b"Set-Cookie", b"SRV=" + ck.opaque_value("app", "s1") + b"; Path=/")]


def test_tables_on_source_and_on_a_learned_cookie() -> None:
    s1, s2 = _servers("s1", "s2")
    table = StickTable(10, 60.0)
    pol = _policy([s1, s2], table)
    c = BackendCounters()
    p = ask(pol, [], b"10.0.0.7", c, NOW, 0.0)
    assert p.target is None and c.persist_new == 1
    pol.response(p, s2, [], NOW, 0.0)
    assert ask(pol, [], b"10.0.0.7", c, NOW, 1.0).target is s2 and c.persist_valid == 1
    assert p.flags == "--"  # no cookie configured: no cookie flags in the log

    table = StickTable(10, 60.0)
    pol = StickyPolicy(
        "app",
        Sticky(table=StickTableConfig(on="cookie", learn_cookie="JSESSIONID")),
        [s1, s2],
        table,
    )
    p = ask(pol, [], b"ip", c, NOW, 0.0)
    pol.response(p, s1, [(b"Set-Cookie", b"JSESSIONID=j42; Path=/")], NOW, 0.0)
    assert table.items() == [(b"j42", "s1", 0.0)]
    jar = [(b"Cookie", b"JSESSIONID=j42")]
    assert ask(pol, jar, b"other-ip", c, NOW, 1.0).target is s1
    table.put(b"j42", "removed-server", 2.0)
    before = c.persist_invalid
    assert ask(pol, jar, b"ip", c, NOW, 3.0).target is None
    assert c.persist_invalid == before + 1


# --- configuration -----------------------------------------------------------------------------


def _errors(body: str) -> list[str]:
    text = textwrap.dedent("""
        frontends: {fe: {bind: 127.0.0.1:8080, default_backend: app}}
        backends:
          app:
        """) + textwrap.indent(textwrap.dedent(body), "    ")
    with pytest.raises(ConfigErrors) as info:
        load_config_text(text.removeprefix("\n"), "x.yaml")
    return [str(e) for e in info.value.errors]


def test_config_sticky_is_parsed() -> None:
    cfg = load_config_text(
        textwrap.dedent("""
        frontends: {fe: {bind: 127.0.0.1:8080, default_backend: app}}
        backends:
          app:
            sticky:
              cookie: {name: SERVERID, mode: insert, indirect: true, nocache: true, maxidle: 30m}
              table: {on: cookie, learn_cookie: JSESSIONID, expire: 1h, size: 1000}
            servers: [{name: s1, address: 127.0.0.1:9001, cookie: a1}]
        """),
        "x.yaml",
    )
    b: Backend = cfg.backend("app")
    assert b.sticky is not None and b.sticky.cookie is not None and b.sticky.table is not None
    assert (b.sticky.cookie.indirect, b.sticky.cookie.nocache, b.sticky.cookie.maxidle) == (
        True,
        True,
        1800.0,
    )
    assert (b.sticky.table.learn_cookie, b.sticky.table.size) == ("JSESSIONID", 1000)
    assert b.servers[0].cookie == "a1"


def test_config_sticky_errors_name_file_line_and_key() -> None:
    assert _errors("""
        sticky:
          cookie: {mode: prefix, name: JSESSIONID, maxidle: 5m, httponly: true}
          table: {on: src, learn_cookie: JSESSIONID}
        servers: [{name: s1, address: 127.0.0.1:9001, cookie: "a|b"}]
        """) == [
        "x.yaml:6: backends.app.sticky.cookie.httponly: only with mode: insert (mode is prefix)",
        "x.yaml:6: backends.app.sticky.cookie.maxidle: only with mode: insert (mode is prefix)",
        "x.yaml:7: backends.app.sticky.table.learn_cookie: only with on: cookie "
        "(on: src keys on the address)",
        "x.yaml:8: backends.app.servers[0].cookie: '|' and '~' are reserved in a persistence "
        "cookie value: 'a|b'",
    ]
    assert _errors("""
        sticky: {table: {on: cookie}}
        servers: [{name: s1, address: 127.0.0.1:9001}]
        """) == [
        "x.yaml:5: backends.app.sticky.table.learn_cookie: required when on: cookie "
        "(the cookie to learn)"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("path", '"/;Domain=evil.example"', "';' is not allowed in a cookie attribute"),
        ("path", '"/a,b"', "',' is not allowed in a cookie attribute"),
        ("path", '"/a\\tb"', "expected a path starting with '/'"),  # whitespace, as before
        ("path", '"/caf\\u00e9"', "'é' is not allowed in a cookie attribute"),
        ("domain", '"ehr.example;Secure"', "';' is not allowed in a cookie attribute"),
        ("domain", '"ehr.example,x"', "',' is not allowed in a cookie attribute"),
        ("domain", '"ehr.example\\u0001"', "'\\x01' is not allowed in a cookie attribute"),
    ],
)
def test_config_cookie_path_and_domain_cannot_smuggle_attributes(
    key: str, value: str, message: str
) -> None:
    errors = _errors(f"""
        sticky:
          cookie: {{name: SERVERID, {key}: {value}}}
        servers: [{{name: s1, address: 127.0.0.1:9001}}]
        """)
    assert len(errors) == 1
    assert errors[0].startswith(f"x.yaml:6: backends.app.sticky.cookie.{key}: {message}")


def test_config_cookie_path_and_domain_plain_values_still_load() -> None:
    cfg = load_config_text(
        textwrap.dedent("""
        frontends: {fe: {bind: 127.0.0.1:8080, default_backend: app}}
        backends:
          app:
            sticky: {cookie: {name: SERVERID, path: /ehr/app-1, domain: .ehr.example}}
            servers: [{name: s1, address: 127.0.0.1:9001}]
        """),
        "x.yaml",
    )
    sticky = cfg.backend("app").sticky
    assert sticky is not None and sticky.cookie is not None
    assert (sticky.cookie.path, sticky.cookie.domain) == ("/ehr/app-1", ".ehr.example")


# --- runtime and exporters ---------------------------------------------------------------------


def test_runtime_keeps_the_table_across_a_rebuild_and_exporters_show_it() -> None:
    from lbd.stats import html
    from lbd.stats.snapshot import snapshot

    text = textwrap.dedent("""
        frontends: {fe: {bind: 127.0.0.1:8080, default_backend: app}}
        backends:
          app:
            sticky: {table: {on: src, size: 10}, cookie: {name: SRV}}
            servers: [{name: s1, address: 127.0.0.1:9001}]
          plain:
            servers: [{name: s1, address: 127.0.0.1:9002}]
        """)
    loop = asyncio.new_event_loop()
    try:
        first = build_runtime(load_config_text(text, "x.yaml"), None, loop)
        app = first.backends["app"]
        assert app.sweeper is not None and app.sticky is not None
        assert first.backends["plain"].sticky is None  # no persistence: no per-request work
        app.sweeper.table.put(b"10.0.0.1", "s1", 0.0)
        app.counters.persist_valid = 3
        bigger = text.replace("size: 10", "size: 20")
        second = build_runtime(load_config_text(bigger, "x.yaml"), first, loop)
        kept = second.backends["app"].sweeper
        assert kept is app.sweeper and kept.table.size == 20 and len(kept.table) == 1
        on_cookie = bigger.replace("{on: src, size: 20}", "{on: cookie, learn_cookie: J}")
        third = build_runtime(load_config_text(on_cookie, "x.yaml"), second, loop)
        fresh = third.backends["app"].sweeper
        assert fresh is not None and fresh is not kept and len(fresh.table) == 0
        assert fresh.running and not kept.running  # the dropped table's timer is cancelled
        snap = snapshot(third, 0.0)
        app_stats = snap["backends"][0]
        assert app_stats["persistence"] == {
            "new": 0,
            "valid": 3,
            "redispatched": 0,
            "invalid": 0,
            "expired": 0,
        }
        assert app_stats["stick_table"] == {
            "on": "cookie",
            "entries": 0,
            "size": 100_000,
            "evicted": 0,
            "expired": 0,
        }
        assert snap["backends"][1]["persistence"] is None
        page = html.render(snap)
        assert "persistence: 0 new · 3 valid" in page and "stick table on cookie: 0/100000" in page
    finally:
        loop.close()
