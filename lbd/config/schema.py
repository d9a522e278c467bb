"""The configuration as frozen, typed objects.

Rules: `load.py` is the only producer of these objects and has already validated every value,
resolved `defaults:` into each frontend and backend, and checked every cross-reference (a
`use_backend` names a real backend). Nothing downstream re-validates. Objects are frozen so a
runtime snapshot built from them can be swapped on reload without anyone editing it in place.
Durations are float seconds; sizes are int bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AdminState = Literal["ready", "drain", "maint"]
UrlPolicy = Literal["reject", "log", "normalize"]
Algorithm = Literal[
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "hdr",
    "cookie",
    "random",
    "ewma",
]


@dataclass(frozen=True, slots=True)
class Address:
    """A `HOST:PORT` (IPv6 as `[::1]:PORT`). Host is kept literal; no DNS at load time."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    client: float = 30.0  # client inactivity while a request or response is in progress
    server: float = 30.0  # server inactivity
    http_request: float = 10.0  # the whole request-header phase → 408
    keep_alive: float = 60.0  # idle client connection between requests
    queue: float = 5.0  # waiting for a server slot (maxconn) → 503
    shutdown: float = 30.0  # graceful stop: how long in-flight requests may run on


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 32 * 1024  # whole header section → 431
    max_headers: int = 100  # → 431
    max_uri_bytes: int = 8 * 1024  # → 414
    max_body_bytes: int = 10 * 1024 * 1024  # → 413


@dataclass(frozen=True, slots=True)
class StatsConfig:
    bind: Address
    auth_file: str | None = None  # htpasswd-style file; required for a non-loopback bind


@dataclass(frozen=True, slots=True)
class LogConfig:
    access: str = "stdout"  # stdout | off | a file path | syslog:udp://HOST:PORT | syslog:unix:PATH
    format: Literal["httplog", "json"] = "httplog"


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    workers: int | Literal["auto"] = 1
    admin_socket: str | None = None
    # The admin socket is root-equivalent: 0600 and the daemon's user unless told otherwise.
    admin_socket_mode: int = 0o600
    admin_socket_owner: str | None = None  # user name or uid
    admin_socket_group: str | None = None  # group name or gid
    stats: StatsConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    limits: Limits = field(default_factory=Limits)


# --- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str  # as written; compared case-insensitively
    equals: str | None = None
    regex: str | None = None
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class QueryMatch:
    name: str
    equals: str | None = None


@dataclass(frozen=True, slots=True)
class Matcher:
    """Every key that is set must hold (logical AND). An empty matcher matches everything."""

    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    host: str | None = None  # compared case-insensitively, port ignored
    method: str | None = None
    header: HeaderMatch | None = None
    query: QueryMatch | None = None
    src: str | None = None  # CIDR, already validated with ipaddress


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    match: Matcher
    url_policy: UrlPolicy | None = None  # overrides the frontend's policy for this module


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str
    code: int = 302


@dataclass(frozen=True, slots=True)
class ReturnAction:
    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Rule:
    """`when` plus exactly one terminal action, or header edits that fall through to later rules."""

    when: Matcher
    use_backend: str | None = None
    deny: int | None = None
    redirect: Redirect | None = None
    return_: ReturnAction | None = None  # YAML key `return`
    set_header: tuple[tuple[str, str], ...] = ()
    del_header: tuple[str, ...] = ()
    line: int = 0  # where the rule starts in the file, for `lbd reload` reports


# Mozilla's "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3 suites are
# OpenSSL's defaults and not set by this list. https://wiki.mozilla.org/Security/Server_Side_TLS
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True, slots=True)
class Certificate:
    """One certificate chain and its key (PEM files). SNI names come from the certificate's
    subjectAltName (or CN) unless `names` lists them."""

    cert: str
    key: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hsts:
    max_age: int = 31_536_000  # seconds (one year, what the HSTS preload list asks)
    include_subdomains: bool = False
    preload: bool = False


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """`tls:` on a frontend. `cert`/`key` is the default certificate (clients without SNI or
    naming no other certificate get it); `certificates` are more, chosen by SNI."""

    cert: str
    key: str
    certificates: tuple[Certificate, ...] = ()
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str = MODERN_CIPHERS  # TLS 1.2 suites (OpenSSL cipher string)
    hsts: Hsts | None = None


@dataclass(frozen=True, slots=True)
class PerSource:
    """`per_source:` abuse limits, keyed on the client address (HAProxy: a stick table on src
    with `sc_http_req_rate` and `src_conn_cur`). 0 turns a limit off."""

    requests_per_second: float = 0.0  # token bucket refill rate
    burst: int = 0  # bucket size; 0: max(1, requests_per_second)
    max_connections: int = 0  # concurrent connections per address
    table_size: int = 100_000  # addresses tracked; the least recently seen is evicted


# RFC 9110 §9.3 methods and PATCH (RFC 5789); TRACE (cross-site tracing) and CONNECT are not
# served by default. `allowed_methods` widens or narrows it per frontend (→ 501 otherwise).
DEFAULT_ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")


@dataclass(frozen=True, slots=True)
class Frontend:
    name: str
    bind: tuple[Address, ...]
    default_backend: str
    tls: TlsConfig | None = None
    url_policy: UrlPolicy = "reject"
    url_policy_dry_run: bool = False  # YAML: `url_policy_dry_run: true` records "would reject"
    allowed_methods: tuple[str, ...] = DEFAULT_ALLOWED_METHODS  # others → 501
    modules: tuple[Module, ...] = ()
    rules: tuple[Rule, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    maxconn: int = 0  # 0: unlimited; at maxconn open connections, accepting pauses
    allow: tuple[str, ...] = ()  # CIDRs; when set, other sources are closed at accept
    deny: tuple[str, ...] = ()  # CIDRs closed at accept (checked before `allow`)
    per_source: PerSource | None = None


# --- backends ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthCheck:
    type: Literal["tcp", "http"] = "tcp"
    path: str = "/health"
    method: str = "GET"
    host: str | None = None
    expect_status: tuple[int, ...] = (200,)  # `200-399` expands to every code in the range
    expect_body: str | None = None
    interval: float = 2.0
    fastinterval: float | None = None  # None: same as interval
    downinterval: float | None = None  # None: same as interval
    timeout: float | None = None  # None: same as interval
    rise: int = 2
    fall: int = 3
    init_state: Literal["up", "down"] = "up"


@dataclass(frozen=True, slots=True)
class Observe:
    mode: Literal["layer4", "layer7"] = "layer4"
    error_limit: int = 10
    on_error: Literal["fastinter", "fail-check", "sudden-death", "mark-down"] = "fail-check"


@dataclass(frozen=True, slots=True)
class CookieSticky:
    name: str = "SERVERID"
    mode: Literal["insert", "rewrite", "prefix"] = "insert"
    indirect: bool = False
    nocache: bool = False
    preserve: bool = False
    httponly: bool = False
    secure: bool = False
    samesite: Literal["Strict", "Lax", "None"] | None = None
    domain: str | None = None
    path: str | None = None
    maxidle: float | None = None
    maxlife: float | None = None


@dataclass(frozen=True, slots=True)
class StickTable:
    on: Literal["src", "cookie"] = "src"
    learn_cookie: str | None = None  # required when on == "cookie"
    expire: float = 30 * 60.0
    size: int = 100_000


@dataclass(frozen=True, slots=True)
class Sticky:
    cookie: CookieSticky | None = None
    table: StickTable | None = None


@dataclass(frozen=True, slots=True)
class ServerTls:
    """`tls:` on a server: lbd speaks TLS to it, verifying its certificate by default."""

    verify: bool = True
    ca_file: str | None = None  # None: the system's trust store
    sni: str | None = None  # server_name sent and verified; None: the address's host


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    address: Address
    weight: int = 1  # 0..256; 0 receives only persistent traffic
    maxconn: int = 0  # 0: unlimited
    maxqueue: int = 0  # 0: unlimited (bounded by timeouts.queue)
    backup: bool = False
    state: AdminState = "ready"  # initial administrative state
    slowstart: float = 0.0
    cookie: str | None = None  # persistence value override
    health_check: HealthCheck | None = None  # overrides the backend's check for this server
    check: bool = True  # false: never actively checked even if the backend has a check
    tls: ServerTls | None = None  # YAML `tls: true` or `tls: {verify, ca_file, sni}`


@dataclass(frozen=True, slots=True)
class Balance:
    algorithm: Algorithm = "roundrobin"
    arg: str | None = None  # NAME in hdr(NAME) / cookie(NAME)
    hash_type: Literal["map-based", "consistent"] = "map-based"
    hash_balance_factor: int = 0  # 0: unbounded; e.g. 150 → at most 150% of the average load
    uri_whole: bool = False  # `uri`: include the query string
    uri_depth: int = 0  # `uri`: 0 means the whole path
    draws: int = 2  # `random`: power of N choices


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    servers: tuple[Server, ...]
    balance: Balance = field(default_factory=Balance)
    health_check: HealthCheck | None = None
    observe: Observe | None = None
    sticky: Sticky | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: int = 3
    redispatch: bool = True
    retry_on: tuple[str, ...] = ("conn-failure",)
    allbackups: bool = False
    pool_max_idle: int = 1024  # idle keep-alive connections kept per server (HAProxy: unlimited)
    pool_idle_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """One whole configuration file, validated. `path` is the file it came from."""

    path: str
    global_: GlobalConfig  # YAML key `global`
    frontends: tuple[Frontend, ...]
    backends: tuple[Backend, ...]
    # key path → line number, so later stages (runtime build, reload diff) can point at the file
    lines: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)
