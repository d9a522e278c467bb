"""The configuration loader: one test per kind of error, with exact `FILE:LINE: key: message`
lines, then defaults inheritance, the shipped conf/ files, and `lbd check` end to end.

Every YAML text here starts on line 1 (see `_text`), so the line numbers in the expected
messages can be counted in the test itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lbd.config.load import load_config, load_config_text
from lbd.config.schema import Address, Config, Timeouts
from lbd.config.units import parse_duration, parse_size
from lbd.errors import ConfigErrors

REPO = Path(__file__).resolve().parent.parent
CONF_FILES = sorted((REPO / "conf").glob("*.yaml"))


def _text(yaml_text: str) -> str:
    return textwrap.dedent(yaml_text).removeprefix("\n")


def load(yaml_text: str, path: str = "conf/x.yaml") -> Config:
    return load_config_text(_text(yaml_text), path)


def errors(yaml_text: str, path: str = "conf/x.yaml") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(yaml_text, path)
    return [str(e) for e in info.value.errors]


# --- units --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), (30, 30.0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        (512, 512),
        ("64KiB", 65536),
        ("10MiB", 10 * 1024**2),
        ("1GiB", 1024**3),
        ("10KB", 10240),  # 1024-based, like HAProxy
        ("10k", 10240),
        ("2M", 2 * 1024**2),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2x", "-1s", "", "s", "1.5.2s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["10XB", "-5", "KiB", "1.1"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# --- one test per kind of error -----------------------------------------------------------------


def test_unknown_key_suggests_the_closest() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            colour: blue
        backends:
          app:
            balanse: roundrobin
            servers:
              - {name: app1, address: 127.0.0.1:9001, wieght: 2}
        """) == [
        "conf/x.yaml:5: frontends.web.colour: unknown key",
        "conf/x.yaml:8: backends.app.balanse: unknown key (did you mean 'balance'?)",
        "conf/x.yaml:10: backends.app.servers[0].wieght: unknown key (did you mean 'weight'?)",
    ]


def test_duplicate_key() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
        backends:
          app:
            servers:
              - {name: app1, address: 127.0.0.1:9001}
            balance: roundrobin
            retries: 3
            redispatch: true
            balance: leastconn
        """) == ["conf/x.yaml:12: backends.app.balance: duplicate key (first at line 9)"]


def test_bad_address() -> None:
    assert errors(
        """
        # line 1
        global:
          workers: 1
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
        backends:
          app:
            balance: roundrobin
            servers:
              - name: app1
                address: 127.0.0.1:9001
              - {name: app2, address: 127.0.0.1}
              - {name: app3, address: "::1:9003"}
              - {name: app4, address: "[::1]:9004"}
              - {name: app5, address: 10.0.0.256:80}
        """,
        "conf/lbd.yaml",
    ) == [
        "conf/lbd.yaml:14: backends.app.servers[1].address: expected HOST:PORT, got '127.0.0.1'",
        "conf/lbd.yaml:15: backends.app.servers[2].address: "
        "expected HOST:PORT (IPv6 as [ADDR]:PORT), got '::1:9003'",
        "conf/lbd.yaml:17: backends.app.servers[4].address: invalid IPv4 address '10.0.0.256'",
    ]


def test_bad_duration() -> None:
    assert errors("""
        defaults:
          timeouts: {connect: 5 seconds}
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            timeouts:
              client: 0s
        backends:
          app:
            health_check: {interval: fast}
            servers:
              - {name: app1, address: 127.0.0.1:9001}
        """) == [
        "conf/x.yaml:2: defaults.timeouts.connect: "
        "expected a duration like 250ms, 2s, 5m or 1h, got '5 seconds'",
        "conf/x.yaml:8: frontends.web.timeouts.client: must be more than 0, got '0s'",
        "conf/x.yaml:11: backends.app.health_check.interval: "
        "expected a duration like 250ms, 2s, 5m or 1h, got 'fast'",
    ]


def test_bad_size() -> None:
    assert errors("""
        global:
          limits:
            max_header_bytes: 32 kilobytes
            max_uri_bytes: 0
        frontends:
          web: {bind: 127.0.0.1:8080, default_backend: app}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """) == [
        "conf/x.yaml:3: global.limits.max_header_bytes: "
        "expected a size like 512, 64KiB or 10MiB, got '32 kilobytes'",
        "conf/x.yaml:4: global.limits.max_uri_bytes: must be at least 1 bytes, got '0'",
    ]


def test_out_of_range_weight_port_and_counts() -> None:
    assert errors("""
        frontends:
          web:
            bind: ["127.0.0.1:80800"]
            default_backend: app
        backends:
          app:
            retries: 101
            health_check: {rise: 0}
            servers:
              - {name: app1, address: 127.0.0.1:9001, weight: 257}
              - {name: app2, address: 127.0.0.1:0, weight: -1}
        """) == [
        "conf/x.yaml:3: frontends.web.bind[0]: port must be 1-65535, got 80800",
        "conf/x.yaml:7: backends.app.retries: must be 0-100, got 101",
        "conf/x.yaml:8: backends.app.health_check.rise: must be 1-1000, got 0",
        "conf/x.yaml:10: backends.app.servers[0].weight: must be 0-256, got 257",
        "conf/x.yaml:11: backends.app.servers[1].address: port must be 1-65535, got 0",
        "conf/x.yaml:11: backends.app.servers[1].weight: must be 0-256, got -1",
    ]


def test_missing_required_keys() -> None:
    assert errors("""
        frontends:
          web:
            url_policy: log
        backends:
          app:
            balance: roundrobin
          api:
            servers:
              - {name: api1}
        """) == [
        "conf/x.yaml:2: frontends.web.bind: missing required key",
        "conf/x.yaml:2: frontends.web.default_backend: missing required key",
        "conf/x.yaml:5: backends.app.servers: missing required key",
        "conf/x.yaml:9: backends.api.servers[0].address: missing required key",
    ]


def test_missing_sections() -> None:
    assert errors("global: {workers: auto}\n") == [
        "conf/x.yaml:1: backends: missing required key",
        "conf/x.yaml:1: frontends: missing required key",
    ]
    assert errors("frontends: {}\nbackends:\n") == [
        "conf/x.yaml:1: frontends: must define at least one frontend",
        "conf/x.yaml:2: backends: expected a mapping of backends by name, got null",
    ]


def test_unknown_backend_reference() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            rules:
              - {when: {path_prefix: /static}, use_backend: statc}
              - {when: {path_prefix: /api}, use_backend: billing}
            default_backend: ap
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
          static: {servers: [{name: static1, address: 127.0.0.1:9101}]}
        """) == [
        "conf/x.yaml:5: frontends.web.rules[0].use_backend: "
        "unknown backend 'statc' (did you mean 'static'?)",
        "conf/x.yaml:6: frontends.web.rules[1].use_backend: unknown backend 'billing'",
        "conf/x.yaml:7: frontends.web.default_backend: unknown backend 'ap' (did you mean 'app'?)",
    ]


def test_bad_regex() -> None:
    assert errors(r"""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            modules:
              - {name: static, path_regex: '\.(css|js$'}
            rules:
              - {when: {header: {name: User-Agent, regex: '[a-'}}, deny: 403}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """) == [
        "conf/x.yaml:6: frontends.web.modules[0].path_regex: "
        "invalid regex: missing ), unterminated subpattern at position 2",
        "conf/x.yaml:8: frontends.web.rules[0].when.header.regex: "
        "invalid regex: unterminated character set at position 0",
    ]


def test_bad_cidr() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            rules:
              - {when: {src: 10.0.0.0/33}, deny: 403}
              - {when: {src: intranet}, deny: 403}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """) == [
        "conf/x.yaml:6: frontends.web.rules[0].when.src: "
        "expected an address or CIDR network like 10.0.0.0/8, got '10.0.0.0/33'",
        "conf/x.yaml:7: frontends.web.rules[1].when.src: "
        "expected an address or CIDR network like 10.0.0.0/8, got 'intranet'",
    ]


def test_bad_balance() -> None:
    algorithms = (
        "roundrobin, static-rr, leastconn, first, source, uri, random, ewma, "
        "hdr(NAME), cookie(NAME)"
    )
    assert errors("""
        frontends:
          web: {bind: 127.0.0.1:8080, default_backend: a}
        backends:
          a: {balance: roundrobn, servers: [{name: s, address: 127.0.0.1:9001}]}
          b: {balance: hdr, servers: [{name: s, address: 127.0.0.1:9002}]}
          c: {balance: leastconn(x), servers: [{name: s, address: 127.0.0.1:9003}]}
          d: {balance: hash, hash_type: ring, servers: [{name: s, address: 127.0.0.1:9004}]}
        """) == [
        f"conf/x.yaml:4: backends.a.balance: expected one of {algorithms}, got 'roundrobn' "
        "(did you mean 'roundrobin'?)",
        "conf/x.yaml:5: backends.b.balance: hdr needs a name: hdr(NAME), got 'hdr'",
        "conf/x.yaml:6: backends.c.balance: leastconn takes no argument, got 'leastconn(x)'",
        f"conf/x.yaml:7: backends.d.balance: expected one of {algorithms}, got 'hash'",
        "conf/x.yaml:7: backends.d.hash_type: expected one of map-based, consistent, got 'ring'",
    ]


def test_yaml_syntax_error() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
           default_backend: app
        """) == [
        "conf/x.yaml:4: (yaml): expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 2)"
    ]
    # an unclosed bracket is reported where it was opened, not at the end of the file
    assert errors("frontends:\n  web:\n    bind: [127.0.0.1:8080\n\n\n") == [
        "conf/x.yaml:3: (yaml): expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 3)"
    ]


def test_multiple_errors_are_reported_together_sorted_by_line() -> None:
    assert errors("""
        backends:
          app:
            servers:
              - {name: app1, address: 127.0.0.1:9001, weight: 999}
              - {name: app1, address: 127.0.0.1:9002, state: up}
        frontends:
          web:
            bind: [127.0.0.1:8080, 127.0.0.1:8080]
            default_backend: app
            url_policy: strict
        global:
          workers: many
        """) == [
        "conf/x.yaml:4: backends.app.servers[0].weight: must be 0-256, got 999",
        "conf/x.yaml:5: backends.app.servers[1].state: "
        "expected one of ready, drain, maint, got 'up'",
        "conf/x.yaml:5: backends.app.servers[1].name: duplicate server name (first at line 4)",
        "conf/x.yaml:8: frontends.web.bind[1]: "
        "127.0.0.1:8080 is already bound by frontends.web.bind[0] (line 8)",
        "conf/x.yaml:10: frontends.web.url_policy: "
        "expected one of reject, log, normalize, got 'strict'",
        "conf/x.yaml:12: global.workers: expected an integer or 'auto', got 'many'",
    ]


def test_allowed_methods() -> None:
    base = """
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            {line}
        backends:
          app:
            servers: [{{name: a, address: 127.0.0.1:9001}}]
        """
    (web,) = load(base.format(line="")).frontends
    assert web.allowed_methods == ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
    (web,) = load(base.format(line="allowed_methods: [GET, PROPFIND, GET, M-SEARCH]")).frontends
    assert web.allowed_methods == ("GET", "PROPFIND", "M-SEARCH")
    (web,) = load(base.format(line="allowed_methods: GET")).frontends
    assert web.allowed_methods == ("GET",)
    assert errors(base.format(line="allowed_methods: [GET, CONNECT, post, FOO]")) == [
        "conf/x.yaml:5: frontends.web.allowed_methods[1]: "
        "CONNECT is never served: lbd is not a forward proxy",
        "conf/x.yaml:5: frontends.web.allowed_methods[2]: "
        "methods are case-sensitive: did you mean 'POST'?",
        "conf/x.yaml:5: frontends.web.allowed_methods[3]: expected one of GET, HEAD, POST, PUT, "
        "DELETE, OPTIONS, TRACE, PATCH, COPY, LOCK, MKCOL, MOVE, PROPFIND, PROPPATCH, SEARCH, "
        "UNLOCK, BIND, REBIND, UNBIND, ACL, REPORT, MKACTIVITY, CHECKOUT, MERGE, M-SEARCH, NOTIFY, "
        "SUBSCRIBE, UNSUBSCRIBE, PURGE, MKCALENDAR, LINK, UNLINK, SOURCE, QUERY, got 'FOO'",
    ]
    assert errors(base.format(line="allowed_methods: []")) == [
        "conf/x.yaml:5: frontends.web.allowed_methods: must list at least one method"
    ]


def test_allowed_methods_are_the_ones_the_parser_reads() -> None:
    """Every method the configuration accepts must get through httptools' request line."""
    import httptools

    from lbd.config.load import _PARSER_METHODS

    class Sink:
        pass

    for method in _PARSER_METHODS:
        httptools.HttpRequestParser(Sink()).feed_data(f"{method} / HTTP/1.1\r\n\r\n".encode())


def test_two_frontends_may_not_bind_the_same_address() -> None:
    assert errors("""
        global:
          stats: {bind: 127.0.0.1:8404}
        frontends:
          a: {bind: "0.0.0.0:8080", default_backend: app}
          b: {bind: ["127.0.0.1:8080", "127.0.0.1:8404"], default_backend: app}
          c: {bind: "[::1]:8080", default_backend: app}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """) == [
        "conf/x.yaml:5: frontends.b.bind[0]: "
        "127.0.0.1:8080 is already bound by frontends.a.bind (line 4)",
        "conf/x.yaml:5: frontends.b.bind[1]: "
        "127.0.0.1:8404 is already bound by global.stats.bind (line 2)",
    ]


def test_rules_and_modules() -> None:
    assert errors("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            modules:
              - {name: other, path_prefix: /x}
              - {name: dmu, path_prefix: /dmu}
              - {name: dmu, path_prefix: /urgences}
              - {path_prefix: /nameless}
            rules:
              - {deny: 403}
              - {when: {path: /a}}
              - {when: {path: /b}, deny: 403, use_backend: app}
              - {when: {path: /c}, use_backend: app, set_header: {X-A: b}}
              - {when: {path: /d}, deny: 302}
              - {when: {path: /e}, redirect: {location: /f, code: 200}}
              - {when: {header: {name: X-A}}, return: {status: 204, body: hello}}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """) == [
        "conf/x.yaml:6: frontends.web.modules[0].name: 'other' is reserved for unmatched requests",
        "conf/x.yaml:8: frontends.web.modules[2].name: duplicate module name (first at line 7)",
        "conf/x.yaml:9: frontends.web.modules[3].name: missing required key",
        "conf/x.yaml:11: frontends.web.rules[0].when: missing required key",
        "conf/x.yaml:12: frontends.web.rules[1]: a rule needs an action: "
        "one of use_backend, deny, redirect, return, set_header, del_header",
        "conf/x.yaml:13: frontends.web.rules[2]: a rule takes one action, got use_backend, deny",
        "conf/x.yaml:14: frontends.web.rules[3]: set_header cannot be combined with use_backend: "
        "put the header edits in a rule of their own before it",
        "conf/x.yaml:15: frontends.web.rules[4].deny: expected an HTTP status 400-599, got 302",
        "conf/x.yaml:16: frontends.web.rules[5].redirect.code: "
        "expected one of 301, 302, 303, 307, 308, got 200",
        "conf/x.yaml:17: frontends.web.rules[6].when.header: "
        "needs exactly one of equals, regex, present (got none)",
        "conf/x.yaml:17: frontends.web.rules[6].return: a 204 response cannot have a body",
    ]


def test_stats_beyond_loopback_needs_auth_file() -> None:
    text = """
        global:
          stats: {bind: 0.0.0.0:8404}
        frontends:
          web: {bind: 127.0.0.1:8080, default_backend: app}
        backends:
          app: {servers: [{name: app1, address: 127.0.0.1:9001}]}
        """
    assert errors(text) == [
        "conf/x.yaml:2: global.stats.bind: 0.0.0.0:8404 is not loopback: "
        "set auth_file to protect it"
    ]
    cfg = load(text.replace("0.0.0.0:8404}", "0.0.0.0:8404, auth_file: /etc/lbd/stats.htpasswd}"))
    assert cfg.global_.stats is not None
    assert cfg.global_.stats.auth_file == "/etc/lbd/stats.htpasswd"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigErrors) as info:
        load_config(str(missing))
    assert [str(e) for e in info.value.errors] == [
        f"{missing}:1: (file): cannot read: No such file or directory"
    ]


# --- what a valid file turns into ---------------------------------------------------------------


def test_defaults_are_inherited_and_overridden_key_by_key() -> None:
    cfg = load("""
        defaults:
          timeouts: {connect: 2s, server: 45s, queue: 1s}
          retries: 1
          redispatch: false
          retry_on: [conn-failure, 503]
          maxconn: 5000
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            timeouts: {client: 5m}
          api:
            bind: 127.0.0.1:8081
            default_backend: app
            maxconn: 10
        backends:
          app:
            timeouts: {server: 2m}
            retries: 0
            servers: [{name: app1, address: 127.0.0.1:9001}]
          static:
            servers: [{name: static1, address: 127.0.0.1:9101}]
        """)
    web, api = cfg.frontends
    app, static = cfg.backends
    base = Timeouts()
    # the defaults section, where nothing overrides it
    assert static.timeouts == Timeouts(
        connect=2.0,
        client=base.client,
        server=45.0,
        http_request=base.http_request,
        keep_alive=base.keep_alive,
        queue=1.0,
        shutdown=base.shutdown,
    )
    assert (static.retries, static.redispatch, static.retry_on) == (
        1,
        False,
        ("conn-failure", "503"),
    )
    assert api.maxconn == 10 and web.maxconn == 5000
    # an override replaces only the keys it names
    assert web.timeouts.client == 300.0 and web.timeouts.connect == 2.0
    assert web.timeouts.server == 45.0
    assert app.timeouts.server == 120.0 and app.timeouts.connect == 2.0
    assert app.retries == 0 and app.redispatch is False


def test_schema_defaults_without_a_defaults_section() -> None:
    cfg = load_config(str(REPO / "conf" / "minimal.yaml"))
    (web,), (app,) = cfg.frontends, cfg.backends
    assert web.bind == (Address("127.0.0.1", 8080),)
    assert web.timeouts == Timeouts() and app.timeouts == Timeouts()
    assert (app.retries, app.redispatch) == (3, True)
    assert cfg.global_.stats is None and cfg.global_.admin_socket is None


def test_values_yaml_would_mistype() -> None:
    cfg = load("""
        global:
          workers: auto
          log: {access: off}
        frontends:
          web:
            bind: "[::1]:8080"
            default_backend: app
            rules:
              - {when: {}, del_header: X-Debug, set_header: {X-Forwarded-Proto: https}}
        backends:
          app:
            balance: hdr(X-Patient-Id)
            health_check: {type: http, expect_status: "200-204"}
            retry_on: [502, 503]
            sticky:
              table: {on: cookie, learn_cookie: JSESSIONID}
            servers:
              - name: app1
                address: 127.0.0.1:9001
                cookie: 1
                health_check: {path: /ready}
        """)
    assert cfg.global_.workers == "auto"
    assert cfg.global_.log.access == "off"  # not False
    (rule,) = cfg.frontends[0].rules
    assert rule.del_header == ("X-Debug",)
    assert rule.set_header == (("X-Forwarded-Proto", "https"),)
    app = cfg.backends[0]
    assert (app.balance.algorithm, app.balance.arg) == ("hdr", "X-Patient-Id")
    assert app.health_check is not None
    assert app.health_check.expect_status == (200, 201, 202, 203, 204)
    assert app.retry_on == ("502", "503")
    assert app.sticky is not None and app.sticky.table is not None
    assert app.sticky.table.on == "cookie"  # `on` is not the boolean true here
    server = app.servers[0]
    assert server.cookie == "1"
    # a server's check starts from the backend's: only `path` differs
    assert server.health_check is not None
    assert server.health_check.type == "http" and server.health_check.path == "/ready"
    assert server.health_check.expect_status == (200, 201, 202, 203, 204)


def test_anchors_under_x_keys_and_merges() -> None:
    cfg = load("""
        x-backend: &backend {retries: 1, balance: leastconn}
        frontends:
          web: {bind: 127.0.0.1:8080, default_backend: app}
        backends:
          app:
            <<: *backend
            retries: 2
            servers: [{name: app1, address: 127.0.0.1:9001}]
        """)
    app = cfg.backends[0]
    assert (app.retries, app.balance.algorithm) == (2, "leastconn")


def test_lines_name_every_key() -> None:
    cfg = load("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: app
            rules:
              - {when: {path_prefix: /static}, use_backend: app}
        backends:
          app:
            servers:
              - {name: app1, address: 127.0.0.1:9001}
              - name: app2
                address: 127.0.0.1:9002
        """)
    assert cfg.lines["frontends.web"] == 2
    assert cfg.lines["frontends.web.rules[0].use_backend"] == 6
    assert cfg.lines["backends.app.servers[1]"] == 11
    assert cfg.lines["backends.app.servers[1].address"] == 12
    assert cfg.frontends[0].rules[0].line == 6


# --- the shipped files --------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_shipped_file_loads(path: Path) -> None:
    cfg = load_config(str(path))
    assert cfg.frontends and cfg.backends


def test_shipped_files_exist() -> None:
    assert {p.name for p in CONF_FILES} >= {"lbd.yaml", "demo.yaml", "minimal.yaml"}


def test_commented_keys_of_the_reference_file_are_valid() -> None:
    """conf/lbd.yaml shows some keys commented out; uncommented, they must still load."""
    optional = "tls|auth_file|host|expect_body|samesite|domain|path|maxidle|maxlife"
    pattern = re.compile(rf"^([ ]+)# ((?:{optional}): .*?)([ ]+#.*)?$", re.MULTILINE)
    text = (REPO / "conf" / "lbd.yaml").read_text()
    uncommented, count = pattern.subn(r"\1\2", text)
    assert count == 9
    cfg = load_config_text(uncommented, "conf/lbd.yaml")
    assert cfg.frontends[0].tls is not None
    cookie = cfg.backend("app").sticky
    assert cookie is not None and cookie.cookie is not None
    assert cookie.cookie.samesite == "Lax" and cookie.cookie.maxlife == 12 * 3600


def test_demo_file() -> None:
    cfg = load_config(str(REPO / "conf" / "demo.yaml"))
    (ehr,) = cfg.frontends
    assert ehr.name == "ehr" and ehr.bind == (Address("127.0.0.1", 8080),)
    assert [m.name for m in ehr.modules] == [
        "accueil",
        "rendez-vous",
        "comptes-rendus",
        "dmu",
        "static",
    ]
    assert cfg.global_.admin_socket == "/tmp/lbd-demo.sock"
    assert cfg.global_.stats is not None
    assert cfg.global_.stats.bind == Address("127.0.0.1", 8404)
    servers = {b.name: [(s.name, s.address.port) for s in b.servers] for b in cfg.backends}
    assert servers == {
        "app": [("app1", 9001), ("app2", 9002), ("app3", 9003)],
        "static": [("static1", 9101)],
    }


# --- `lbd check` --------------------------------------------------------------------------------


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbd", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: p.name)
def test_check_command_accepts_shipped_files(path: Path) -> None:
    result = _check(path)
    assert (result.returncode, result.stdout) == (0, "configuration valid\n"), result.stderr


def test_check_command_lists_every_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        _text("""
        frontends:
          web:
            bind: 127.0.0.1:8080
            default_backend: ap
        backends:
          app:
            servers:
              - {name: app1, address: 127.0.0.1}
        """)
    )
    result = _check(broken)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{broken}:4: frontends.web.default_backend: unknown backend 'ap' (did you mean 'app'?)",
        f"{broken}:8: backends.app.servers[0].address: expected HOST:PORT, got '127.0.0.1'",
    ]
