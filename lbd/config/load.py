"""YAML text → a validated, frozen `Config` (schema.py).

Rules:
- Validation never stops at the first problem. Every error is collected and raised together as
  ConfigErrors, sorted by line, each printed `FILE:LINE: key.path: message`.
- Lines come from the nodes PyYAML composes. We never let PyYAML build dicts: that would keep
  the last of two duplicate keys silently and forget where each value was written.
- An error about a value names the value's line; an unknown or duplicate key, the key's line; a
  missing key, the line of the key that opens the mapping that should hold it.
- Unknown keys are errors. A key set to null (`key:` or `key: ~`) counts as not set.
- YAML 1.1 reads plain `off`, `on`, `yes` as booleans and `8080` as a number. Keys, and values
  where a string is expected, are read as written, so `access: off` and `on: src` mean what they
  say.
- `defaults:` is resolved here into every frontend and backend; cross-references (backend names)
  are checked here. Nothing downstream re-validates.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from lbd.config.schema import (
    Address,
    AdminState,
    Algorithm,
    Backend,
    Balance,
    Certificate,
    Config,
    CookieSticky,
    Frontend,
    GlobalConfig,
    HeaderMatch,
    HealthCheck,
    Hsts,
    Limits,
    LogConfig,
    Matcher,
    Module,
    Observe,
    PerSource,
    QueryMatch,
    Redirect,
    ReturnAction,
    Rule,
    Server,
    ServerTls,
    StatsConfig,
    StickTable,
    Sticky,
    Timeouts,
    TlsConfig,
    UrlPolicy,
)
from lbd.config.units import parse_duration, parse_size
from lbd.errors import ConfigError, ConfigErrors

T = TypeVar("T")
S = TypeVar("S", bound=str)


# --- public API ---------------------------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read and validate the file at `path`; raise ConfigErrors listing every problem."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigErrors([ConfigError(path, 1, "(file)", f"cannot read: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigErrors([ConfigError(path, line, "(file)", "not UTF-8 text")]) from None
    return load_config_text(text, path)


def load_config_text(text: str, path: str) -> Config:
    """Validate `text` as the content of `path` (which only names the file in errors)."""
    reader = _Reader(path)
    root = _compose(reader, text)
    config = _config(reader, root) if root is not None else None
    if config is None or reader.errors:
        raise ConfigErrors(reader.sorted_errors())
    return config


# --- vocabulary ---------------------------------------------------------------------------------

# The keys each mapping accepts, in the order conf/lbd.yaml documents them.
_TOP_KEYS = ("global", "defaults", "frontends", "backends")
_GLOBAL_KEYS = (
    "workers",
    "admin_socket",
    "admin_socket_mode",
    "admin_socket_owner",
    "admin_socket_group",
    "stats",
    "log",
    "limits",
)
_STATS_KEYS = ("bind", "auth_file")
_LOG_KEYS = ("access", "format")
_LIMIT_KEYS = ("max_header_bytes", "max_headers", "max_uri_bytes", "max_body_bytes")
_DEFAULTS_KEYS = ("timeouts", "retries", "redispatch", "retry_on", "maxconn")
_TIMEOUT_KEYS = tuple(f.name for f in dataclasses.fields(Timeouts))
_FRONTEND_KEYS = (
    "bind",
    "default_backend",
    "tls",
    "url_policy",
    "url_policy_dry_run",
    "allowed_methods",
    "modules",
    "rules",
    "timeouts",
    "maxconn",
    "allow",
    "deny",
    "per_source",
)
_TLS_KEYS = ("cert", "key", "certificates", "min_version", "ciphers", "hsts")
_CERT_KEYS = ("cert", "key", "names")
_HSTS_KEYS = ("max_age", "include_subdomains", "preload")
_PER_SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(PerSource))
_SERVER_TLS_KEYS = ("verify", "ca_file", "sni")
_TLS_VERSIONS: tuple[Literal["1.2", "1.3"], ...] = ("1.2", "1.3")
_MATCHER_KEYS = ("path", "path_prefix", "path_regex", "host", "method", "header", "query", "src")
_MODULE_KEYS = ("name", "url_policy", *_MATCHER_KEYS)
_TERMINAL_ACTIONS = ("use_backend", "deny", "redirect", "return")
_HEADER_ACTIONS = ("set_header", "del_header")
_RULE_KEYS = ("when", *_TERMINAL_ACTIONS, *_HEADER_ACTIONS)
_BACKEND_KEYS = (
    "balance",
    "hash_type",
    "hash_balance_factor",
    "uri_whole",
    "uri_depth",
    "draws",
    "health_check",
    "observe",
    "sticky",
    "servers",
    "timeouts",
    "retries",
    "redispatch",
    "retry_on",
    "allbackups",
    "pool_max_idle",
    "pool_idle_timeout",
)
_SERVER_KEYS = tuple(f.name for f in dataclasses.fields(Server))
_CHECK_KEYS = tuple(f.name for f in dataclasses.fields(HealthCheck))
_OBSERVE_KEYS = tuple(f.name for f in dataclasses.fields(Observe))
_COOKIE_KEYS = tuple(f.name for f in dataclasses.fields(CookieSticky))
_TABLE_KEYS = tuple(f.name for f in dataclasses.fields(StickTable))

_URL_POLICIES: tuple[UrlPolicy, ...] = ("reject", "log", "normalize")
_ADMIN_STATES: tuple[AdminState, ...] = ("ready", "drain", "maint")
_LOG_FORMATS: tuple[Literal["httplog", "json"], ...] = ("httplog", "json")
_HASH_TYPES: tuple[Literal["map-based", "consistent"], ...] = ("map-based", "consistent")
_CHECK_TYPES: tuple[Literal["tcp", "http"], ...] = ("tcp", "http")
_INIT_STATES: tuple[Literal["up", "down"], ...] = ("up", "down")
_OBSERVE_MODES: tuple[Literal["layer4", "layer7"], ...] = ("layer4", "layer7")
_OnError = Literal["fastinter", "fail-check", "sudden-death", "mark-down"]
_ON_ERROR: tuple[_OnError, ...] = ("fastinter", "fail-check", "sudden-death", "mark-down")
_COOKIE_MODES: tuple[Literal["insert", "rewrite", "prefix"], ...] = ("insert", "rewrite", "prefix")
_SAMESITE: tuple[Literal["Strict", "Lax", "None"], ...] = ("Strict", "Lax", "None")
_TABLE_ON: tuple[Literal["src", "cookie"], ...] = ("src", "cookie")
# The methods lbd's request parser (llhttp 9) reads in an HTTP request line; any other word is
# refused by the parser itself, so an allow-list may only name these. CONNECT is never served.
_PARSER_METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "COPY", "LOCK", "MKCOL",
    "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL",
    "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE",
    "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY",
)  # fmt: skip
_RETRY_ON = ("conn-failure", "empty-response", "response-timeout", "502", "503", "504")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
# Algorithms that take no argument, then those that need a NAME: `hdr(X-Patient-Id)`.
_PLAIN_ALGORITHMS: tuple[Algorithm, ...] = (
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "random",
    "ewma",
)
_NAMED_ALGORITHMS: tuple[Algorithm, ...] = ("hdr", "cookie")

# Frontend, backend, server and module names end up in metric labels, admin commands
# (`set server BACKEND/SERVER ...`) and log lines: no spaces, slashes or quotes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE = (
    "invalid name: up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)
# RFC 9110 §5.6.2: token = 1*tchar (header names, methods, cookie names).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 §4.1.1 cookie-octet, for a server's persistence cookie value.
_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]+")
# HOST:PORT or [IPv6]:PORT. The host is checked further below; no DNS at load time.
_ADDRESS = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_BALANCE = re.compile(r"(?P<algorithm>[a-z-]+)(?:\((?P<arg>[^()]*)\))?")
_STATUS_RANGE = re.compile(r"\s*(\d{3})\s*-\s*(\d{3})\s*")
# sun_path is 108 bytes on Linux, one of them the terminating NUL.
_MAX_UNIX_PATH = 107

# Prototypes to read schema defaults from: with slots=True, `Backend.retries` is a slot
# descriptor, not the default value.
_BACKEND = Backend("", ())
_FRONTEND = Frontend("", (), "")
_SERVER = Server("", Address("", 0))
_BALANCE_DEFAULTS = Balance()
_LOG_DEFAULTS = LogConfig()
_LIMITS = Limits()
_REDIRECT = Redirect("")
_RETURN = ReturnAction()
_OBSERVE = Observe()
_COOKIE = CookieSticky()
_TABLE = StickTable()
_TLS = TlsConfig("", "")
_HSTS = Hsts()
_PER_SOURCE = PerSource()


# --- YAML nodes with their lines ----------------------------------------------------------------


class _NodeLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes, and to construct one scalar at a time."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(slots=True)
class _Item:
    """One YAML value and where it was written.

    `value` is dict[str, _Item] for a mapping, list[_Item] for a sequence, else the scalar as
    PyYAML's safe constructor reads it; `text` is a scalar exactly as written.
    """

    value: object
    text: str
    path: str  # dotted key path with list indexes: backends.app.servers[1].address
    line: int  # where the value starts
    key_line: int  # where the key naming the value is (the value's own line for list entries)


def _compose(reader: _Reader, text: str) -> _Item | None:
    """Parse `text` into an _Item tree, or record the syntax error and return None."""
    try:
        loader = _NodeLoader(text)  # checks for unprintable characters right away
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        _syntax_error(reader, text, exc)
        return None
    if node is None:  # an empty file (or only comments): an empty mapping
        return _Item({}, "", "", 1, 1)
    root = _TreeBuilder(reader, loader).build(node, "", 1)
    _record_lines(root, reader.lines)
    return root


def _syntax_error(reader: _Reader, text: str, exc: yaml.YAMLError) -> None:
    line, message = 1, str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark and mark.index >= len(text) and exc.context_mark:
            mark = exc.context_mark  # "unexpected end of file": point at what was left open
        line = mark.line + 1 if mark else 1
        message = exc.problem or "invalid YAML"
        if exc.context:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            message = f"{message} ({exc.context}{where})"
    elif isinstance(exc, ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    reader.error(line, "(yaml)", message)


class _TreeBuilder:
    """Turns composed nodes into _Items, reporting duplicate keys on the way."""

    def __init__(self, reader: _Reader, loader: _NodeLoader) -> None:
        self._reader = reader
        self._loader = loader
        self._open: set[int] = set()  # ids of the nodes being built: catches `&a [*a]`

    def build(self, node: Node, path: str, key_line: int) -> _Item:
        line = node.start_mark.line + 1
        text = node.value if isinstance(node, ScalarNode) else ""
        if id(node) in self._open:
            self._reader.error(line, path, "recursive alias")
            return _Item(None, text, path, line, key_line)
        self._open.add(id(node))
        try:
            value = self._value(node, path, line)
        finally:
            self._open.discard(id(node))
        return _Item(value, text, path, line, key_line)

    def _value(self, node: Node, path: str, line: int) -> object:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [
                self.build(child, f"{path}[{i}]", child.start_mark.line + 1)
                for i, child in enumerate(node.value)
            ]
        try:
            return self._loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:  # e.g. an unknown tag `!foo`
            self._reader.error(line, path, exc.problem or "invalid value")
            return None

    def _mapping(self, node: MappingNode, path: str) -> dict[str, _Item]:
        out: dict[str, _Item] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self._reader.error(key_line, path, "a key must be a plain name")
                continue
            key_path = _join(path, key_node.value)
            first = out.get(key_node.value)
            if first is not None:
                self._reader.error(
                    key_line, key_path, f"duplicate key (first at line {first.key_line})"
                )
                continue
            out[key_node.value] = self.build(value_node, key_path, key_line)
        for merge in merges:
            self._merge(out, merge, path)
        return out

    def _merge(self, out: dict[str, _Item], node: Node, path: str) -> None:
        """`<<: *anchor` or `<<: [*a, *b]`: keys written here win, then the first anchor's."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            line = source.start_mark.line + 1
            if not isinstance(source, MappingNode):
                self._reader.error(line, path, "'<<' merges a mapping or a list of mappings")
                continue
            if id(source) in self._open:
                self._reader.error(line, path, "recursive alias")
                continue
            for key, item in self._mapping(source, path).items():
                out.setdefault(key, item)


def _record_lines(item: _Item, lines: dict[str, int]) -> None:
    """Config.lines: every key path (and list entry) → the line where it is written."""
    children: list[_Item] = []
    if isinstance(item.value, dict):
        children = list(item.value.values())
    elif isinstance(item.value, list):
        children = item.value
    for child in children:
        lines[child.path] = child.key_line
        _record_lines(child, lines)


def _keys(item: _Item) -> list[str]:
    return list(item.value) if isinstance(item.value, dict) else []


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- reading ------------------------------------------------------------------------------------


class _Reader:
    """Collects the errors (and key lines) of one file while the section functions read it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[ConfigError] = []
        self.lines: dict[str, int] = {}

    def error(self, line: int, path: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, line, path or "(document)", message))

    def sorted_errors(self) -> list[ConfigError]:
        # A mapping merged with `<<` in several places is read once per place: report once.
        unique: dict[tuple[int, str, str], ConfigError] = {}
        for e in self.errors:
            unique.setdefault((e.line, e.key, e.message), e)
        return sorted(unique.values(), key=lambda e: e.line)

    def convert(self, item: _Item, conv: Callable[[_Item], T], fallback: T) -> T:
        """`conv(item)`, or report its ValueError at the item and return `fallback`."""
        try:
            return conv(item)
        except ValueError as exc:
            self.error(item.line, item.path, str(exc))
            return fallback

    def fields(self, item: _Item | None, allowed: Collection[str]) -> _Fields | None:
        """The mapping at `item` (None when absent or not a mapping, the latter reported)."""
        if item is None:
            return None
        if not isinstance(item.value, dict):
            self.error(item.line, item.path, f"expected a mapping, got {_describe(item)}")
            return None
        return _Fields(self, item, item.value, allowed)

    def entries(self, item: _Item, single_ok: bool = False) -> list[_Item]:
        """The entries of a list (a lone value counts as a list of one when `single_ok`)."""
        if isinstance(item.value, list):
            return item.value
        if single_ok and item.value is not None and not isinstance(item.value, dict):
            return [item]
        self.error(item.line, item.path, f"expected a list, got {_describe(item)}")
        return []

    def list_of(
        self, item: _Item | None, conv: Callable[[_Item], T], single_ok: bool = False
    ) -> list[T]:
        """Every entry converted; a bad entry is reported at its own line and left out."""
        if item is None:
            return []
        out: list[T] = []
        for entry in self.entries(item, single_ok):
            value = self.convert(entry, conv, None)
            if value is not None:
                out.append(value)
        return out


class _Fields:
    """One mapping being read. Unknown keys are reported once, here; the getters convert a
    value, report a bad one at its line, and fall back to the default so reading goes on."""

    def __init__(
        self, reader: _Reader, item: _Item, mapping: dict[str, _Item], allowed: Collection[str]
    ) -> None:
        self.reader = reader
        self.item = item
        self.map = mapping
        for key, child in mapping.items():
            # top-level `x-...` keys hold YAML anchors for `<<:` merges (as in docker compose)
            if not item.path and key.startswith("x-"):
                continue
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                reader.error(child.key_line, child.path, f"unknown key{hint}")

    def child(self, key: str) -> _Item | None:
        """The value under `key`, None when absent or null."""
        child = self.map.get(key)
        return None if child is None or child.value is None else child

    def has(self, key: str) -> bool:
        return self.child(key) is not None

    def required(self, key: str) -> _Item | None:
        """The value under `key` (even null, for the caller to refuse); reports a missing key."""
        child = self.map.get(key)
        if child is None:
            self.missing(key)
        return child

    def missing(self, key: str) -> None:
        self.reader.error(self.item.key_line, _join(self.item.path, key), "missing required key")

    def get(self, key: str, conv: Callable[[_Item], T], default: T) -> T:
        child = self.child(key)
        return default if child is None else self.reader.convert(child, conv, default)

    def need(self, key: str, conv: Callable[[_Item], T]) -> T | None:
        child = self.required(key)
        return None if child is None else self.reader.convert(child, conv, None)


# --- converters: _Item → value, or ValueError with the message the operator reads ----------------


def _describe(item: _Item) -> str:
    value = item.value
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value) if isinstance(value, str) else item.text


def _string(item: _Item) -> str:
    """A scalar as written: plain `off`, `yes` or `8080` stay strings."""
    if isinstance(item.value, str):
        return item.value
    if item.value is None or isinstance(item.value, dict | list):
        raise ValueError(f"expected a string, got {_describe(item)}")
    return item.text


def _nonempty(item: _Item) -> str:
    text = _string(item)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _boolean(item: _Item) -> bool:
    if not isinstance(item.value, bool):
        raise ValueError(f"expected true or false, got {_describe(item)}")
    return item.value


def _integer(lo: int, hi: int | None = None) -> Callable[[_Item], int]:
    def convert(item: _Item) -> int:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_describe(item)}")
        if value < lo or (hi is not None and value > hi):
            bounds = f"{lo}-{hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    return convert


def _duration(positive: bool = True) -> Callable[[_Item], float]:
    def convert(item: _Item) -> float:
        seconds = parse_duration(_string(item))
        if positive and seconds <= 0:
            raise ValueError(f"must be more than 0, got {item.text!r}")
        return seconds

    return convert


def _size(lo: int) -> Callable[[_Item], int]:
    def convert(item: _Item) -> int:
        size = parse_size(_string(item))
        if size < lo:
            raise ValueError(f"must be at least {lo} bytes, got {item.text!r}")
        return size

    return convert


def _one_of(options: tuple[S, ...]) -> Callable[[_Item], S]:
    def convert(item: _Item) -> S:
        text = _string(item)
        for option in options:
            if text == option:
                return option
        raise ValueError(_expected_one_of(options, text))

    return convert


def _expected_one_of(options: Collection[str], got: str) -> str:
    close = difflib.get_close_matches(got, options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"expected one of {', '.join(options)}, got {got!r}{hint}"


def _name(item: _Item) -> str:
    text = _string(item)
    if not _NAME.fullmatch(text):
        raise ValueError(f"{_NAME_RULE}, got {text!r}")
    return text


def _token(item: _Item) -> str:
    """A header name, method or cookie name (RFC 9110 token)."""
    text = _string(item)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"expected a token (letters, digits, -_.!#$%&'*+^`|~), got {text!r}")
    return text


def _header_value(item: _Item) -> str:
    text = _string(item)
    if any(c in text for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return text


def _location(item: _Item) -> str:
    text = _nonempty(item)
    if any(c.isspace() or c == "\0" for c in text):
        raise ValueError(f"expected a URL or a path without spaces, got {text!r}")
    return text


def _url_path(item: _Item) -> str:
    text = _string(item)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError(f"expected a path starting with '/', got {text!r}")
    return text


def _host(item: _Item) -> str:
    text = _nonempty(item)
    if "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"expected a host name, got {text!r}")
    return text


def _regex(item: _Item) -> str:
    text = _string(item)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None
    return text


def _cidr(item: _Item) -> str:
    text = _string(item)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        msg = f"expected an address or CIDR network like 10.0.0.0/8, got {text!r}"
        raise ValueError(msg) from None


def _status(lo: int, hi: int) -> Callable[[_Item], int]:
    def convert(item: _Item) -> int:
        code = item.value
        if isinstance(code, bool) or not isinstance(code, int) or not lo <= code <= hi:
            raise ValueError(f"expected an HTTP status {lo}-{hi}, got {_describe(item)}")
        return code

    return convert


def _redirect_code(item: _Item) -> int:
    code = item.value
    if isinstance(code, bool) or not isinstance(code, int) or code not in _REDIRECT_CODES:
        codes = ", ".join(map(str, _REDIRECT_CODES))
        raise ValueError(f"expected one of {codes}, got {_describe(item)}")
    return code


def _expect_status(item: _Item) -> tuple[int, ...]:
    """[200, 204], a single 200, or a range string "200-399" (also as a list entry)."""
    entries = item.value if isinstance(item.value, list) else [item]
    codes: list[int] = []
    for entry in entries:
        if isinstance(entry.value, str) and (m := _STATUS_RANGE.fullmatch(entry.value)):
            lo, hi = int(m.group(1)), int(m.group(2))
            if not 100 <= lo <= hi <= 599:
                raise ValueError(f"expected a range of HTTP statuses, got {entry.value!r}")
            codes.extend(range(lo, hi + 1))
        else:
            codes.append(_status(100, 599)(entry))
    if not codes:
        raise ValueError("must list at least one status")
    return tuple(dict.fromkeys(codes))  # de-duplicated, in the order written


def _parse_address(text: str) -> Address:
    """`HOST:PORT` or `[IPV6]:PORT` → Address; ValueError with the operator's message."""
    match = _ADDRESS.fullmatch(text)
    if match is None:
        hint = " (IPv6 as [ADDR]:PORT)" if text.count(":") > 1 else ""
        raise ValueError(f"expected HOST:PORT{hint}, got {text!r}")
    port = int(match.group("port6") or match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, got {port}")
    if match.group("v6") is not None:
        host = match.group("v6")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
        return Address(host, port)
    host = match.group("host")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid host name {host!r}")
    return Address(host, port)


def _address(item: _Item) -> Address:
    return _parse_address(_string(item))


def _unix_path(item: _Item) -> str:
    text = _nonempty(item)
    if len(text.encode()) > _MAX_UNIX_PATH:
        raise ValueError(f"too long for a unix socket (at most {_MAX_UNIX_PATH} bytes)")
    return text


def _access_log(item: _Item) -> str:
    """stdout | off | syslog:udp://HOST:PORT | syslog:unix:PATH | a file path."""
    text = _nonempty(item)
    if not text.startswith("syslog:"):
        return text
    target = text.removeprefix("syslog:")
    if target.startswith("udp://"):
        _parse_address(target.removeprefix("udp://"))
    elif target.startswith("unix:") and len(target) > len("unix:"):
        if len(target.removeprefix("unix:").encode()) > _MAX_UNIX_PATH:
            raise ValueError(f"too long for a unix socket (at most {_MAX_UNIX_PATH} bytes)")
    else:
        raise ValueError(f"expected syslog:udp://HOST:PORT or syslog:unix:PATH, got {text!r}")
    return text


def _workers(item: _Item) -> int | Literal["auto"]:
    if item.value == "auto":
        return "auto"
    if isinstance(item.value, int) and not isinstance(item.value, bool):
        return _integer(1, 1024)(item)
    raise ValueError(f"expected an integer or 'auto', got {_describe(item)}")


def _hash_balance_factor(item: _Item) -> int:
    # HAProxy's rule: 0 turns bounded loads off, else a percentage of the average above 100.
    factor = _integer(0, 65535)(item)
    if 0 < factor <= 100:
        raise ValueError(f"must be 0 (off) or 101-65535, got {factor}")
    return factor


def _balance(item: _Item) -> tuple[Algorithm, str | None]:
    """`roundrobin`, ..., `hdr(NAME)`, `cookie(NAME)` → (algorithm, NAME or None)."""
    text = _string(item).strip()
    match = _BALANCE.fullmatch(text)
    name = match.group("algorithm") if match else text
    arg = match.group("arg") if match else None
    for algorithm in _NAMED_ALGORITHMS:
        if name == algorithm:
            if not arg or not _TOKEN.fullmatch(arg.strip()):
                raise ValueError(f"{algorithm} needs a name: {algorithm}(NAME), got {text!r}")
            return algorithm, arg.strip()
    for algorithm in _PLAIN_ALGORITHMS:
        if name == algorithm:
            if arg is not None:
                raise ValueError(f"{algorithm} takes no argument, got {text!r}")
            return algorithm, None
    choices = [*_PLAIN_ALGORITHMS, *(f"{a}(NAME)" for a in _NAMED_ALGORITHMS)]
    raise ValueError(_expected_one_of(choices, text))


def _backend_ref(names: Collection[str] | None) -> Callable[[_Item], str]:
    """A backend name; checked against `names` unless the backends section is unusable."""

    def convert(item: _Item) -> str:
        text = _nonempty(item)
        if names is not None and text not in names:
            close = difflib.get_close_matches(text, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown backend {text!r}{hint}")
        return text

    return convert


# --- sections -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Defaults:
    """The `defaults:` section, resolved; each frontend and backend starts from it."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: int = _BACKEND.retries
    redispatch: bool = _BACKEND.redispatch
    retry_on: tuple[str, ...] = _BACKEND.retry_on
    maxconn: int = _FRONTEND.maxconn


@dataclass(slots=True)
class _Bound:
    """A listening address already taken, to refuse a second listener on it."""

    address: Address
    item: _Item


def _config(reader: _Reader, root: _Item) -> Config | None:
    f = reader.fields(root, _TOP_KEYS)
    if f is None:
        return None
    bound: list[_Bound] = []
    global_ = _global(reader, f.child("global"), bound)
    defaults = _defaults(reader, f.child("defaults"))
    # backends first: rules and default_backend are checked against their names
    backends_item = _named_section(f, "backends", "backend")
    backend_names = set(_keys(backends_item)) if backends_item else None
    backends = _each_named(
        reader, backends_item, lambda name, item: _backend(reader, name, item, defaults)
    )
    frontends = _each_named(
        reader,
        _named_section(f, "frontends", "frontend"),
        lambda name, item: _frontend(reader, name, item, defaults, backend_names, bound),
    )
    return Config(reader.file, global_, frontends, backends, reader.lines)


def _named_section(f: _Fields, key: str, what: str) -> _Item | None:
    """`frontends:` / `backends:`: a required, non-empty mapping of NAME → definition."""
    item = f.required(key)
    if item is None:
        return None
    if not isinstance(item.value, dict):
        f.reader.error(
            item.line, item.path, f"expected a mapping of {what}s by name, got {_describe(item)}"
        )
        return None
    if not item.value:
        f.reader.error(item.key_line, item.path, f"must define at least one {what}")
        return None
    return item


def _each_named(
    reader: _Reader, section: _Item | None, read: Callable[[str, _Item], T | None]
) -> tuple[T, ...]:
    if section is None or not isinstance(section.value, dict):
        return ()
    out: list[T] = []
    for name, item in section.value.items():
        if not _NAME.fullmatch(name):
            reader.error(item.key_line, item.path, _NAME_RULE)
            continue
        value = read(name, item)
        if value is not None:
            out.append(value)
    return tuple(out)


def _global(reader: _Reader, item: _Item | None, bound: list[_Bound]) -> GlobalConfig:
    f = reader.fields(item, _GLOBAL_KEYS)
    if f is None:
        return GlobalConfig()
    return GlobalConfig(
        workers=f.get("workers", _workers, 1),
        admin_socket=f.get("admin_socket", _unix_path, None),
        admin_socket_mode=f.get("admin_socket_mode", _file_mode, 0o600),
        admin_socket_owner=f.get("admin_socket_owner", _nonempty, None),
        admin_socket_group=f.get("admin_socket_group", _nonempty, None),
        stats=_stats(reader, f.child("stats"), bound),
        log=_log(reader, f.child("log")),
        limits=_limits(reader, f.child("limits")),
    )


def _stats(reader: _Reader, item: _Item | None, bound: list[_Bound]) -> StatsConfig | None:
    f = reader.fields(item, _STATS_KEYS)
    if f is None:
        return None
    bind = f.need("bind", _address)
    auth_file = f.get("auth_file", _nonempty, None)
    bind_item = f.child("bind")
    if bind is None or bind_item is None:
        return None
    if auth_file is None and not _is_loopback(bind.host):
        reader.error(
            bind_item.line, bind_item.path, f"{bind} is not loopback: set auth_file to protect it"
        )
    _claim(reader, bound, bind, bind_item)
    return StatsConfig(bind=bind, auth_file=auth_file)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _log(reader: _Reader, item: _Item | None) -> LogConfig:
    f = reader.fields(item, _LOG_KEYS)
    if f is None:
        return LogConfig()
    return LogConfig(
        access=f.get("access", _access_log, _LOG_DEFAULTS.access),
        format=f.get("format", _one_of(_LOG_FORMATS), _LOG_DEFAULTS.format),
    )


def _limits(reader: _Reader, item: _Item | None) -> Limits:
    f = reader.fields(item, _LIMIT_KEYS)
    if f is None:
        return Limits()
    return Limits(
        max_header_bytes=f.get("max_header_bytes", _size(1), _LIMITS.max_header_bytes),
        max_headers=f.get("max_headers", _integer(1, 10_000), _LIMITS.max_headers),
        max_uri_bytes=f.get("max_uri_bytes", _size(1), _LIMITS.max_uri_bytes),
        max_body_bytes=f.get("max_body_bytes", _size(0), _LIMITS.max_body_bytes),
    )


def _defaults(reader: _Reader, item: _Item | None) -> _Defaults:
    f = reader.fields(item, _DEFAULTS_KEYS)
    if f is None:
        return _Defaults()
    base = _Defaults()
    return _Defaults(
        timeouts=_timeouts(reader, f.child("timeouts"), base.timeouts),
        retries=f.get("retries", _integer(0, 100), base.retries),
        redispatch=f.get("redispatch", _boolean, base.redispatch),
        retry_on=_retry_on(reader, f.child("retry_on"), base.retry_on),
        maxconn=f.get("maxconn", _integer(0), base.maxconn),
    )


def _timeouts(reader: _Reader, item: _Item | None, base: Timeouts) -> Timeouts:
    """Each key given overrides `base` (the defaults); the others are inherited."""
    f = reader.fields(item, _TIMEOUT_KEYS)
    if f is None:
        return base
    values = {key: f.get(key, _duration(), getattr(base, key)) for key in _TIMEOUT_KEYS}
    return Timeouts(**values)


def _retry_on(reader: _Reader, item: _Item | None, base: tuple[str, ...]) -> tuple[str, ...]:
    if item is None:
        return base
    # YAML reads `502` as a number; _one_of compares the text as written.
    return tuple(dict.fromkeys(reader.list_of(item, _one_of(_RETRY_ON), single_ok=True)))


# --- frontends ----------------------------------------------------------------------------------


def _frontend(
    reader: _Reader,
    name: str,
    item: _Item,
    defaults: _Defaults,
    backend_names: Collection[str] | None,
    bound: list[_Bound],
) -> Frontend | None:
    f = reader.fields(item, _FRONTEND_KEYS)
    if f is None:
        return None
    return Frontend(
        name=name,
        bind=_binds(reader, f, bound),
        default_backend=f.need("default_backend", _backend_ref(backend_names)) or "",
        tls=_tls(reader, f.child("tls")),
        url_policy=f.get("url_policy", _one_of(_URL_POLICIES), _FRONTEND.url_policy),
        url_policy_dry_run=f.get("url_policy_dry_run", _boolean, _FRONTEND.url_policy_dry_run),
        allowed_methods=_allowed_methods(reader, f.child("allowed_methods")),
        modules=_modules(reader, f.child("modules")),
        rules=tuple(_rules(reader, f.child("rules"), backend_names)),
        timeouts=_timeouts(reader, f.child("timeouts"), defaults.timeouts),
        maxconn=f.get("maxconn", _integer(0), defaults.maxconn),
        allow=tuple(reader.list_of(f.child("allow"), _cidr, single_ok=True)),
        deny=tuple(reader.list_of(f.child("deny"), _cidr, single_ok=True)),
        per_source=_per_source(reader, f.child("per_source")),
    )


def _allowed_methods(reader: _Reader, item: _Item | None) -> tuple[str, ...]:
    """`allowed_methods: [GET, POST, …]`: the methods served; any other gets 501."""
    if item is None:
        return _FRONTEND.allowed_methods
    methods = tuple(dict.fromkeys(reader.list_of(item, _method, single_ok=True)))
    if isinstance(item.value, list) and not item.value:
        reader.error(item.line, item.path, "must list at least one method")
    return methods


def _method(item: _Item) -> str:
    text = _string(item)
    if text == "CONNECT":
        raise ValueError("CONNECT is never served: lbd is not a forward proxy")
    if text not in _PARSER_METHODS:
        if text.upper() in _PARSER_METHODS:
            raise ValueError(f"methods are case-sensitive: did you mean '{text.upper()}'?")
        raise ValueError(_expected_one_of(_PARSER_METHODS, text))
    return text


def _binds(reader: _Reader, f: _Fields, bound: list[_Bound]) -> tuple[Address, ...]:
    """`bind: HOST:PORT` or a list of them; no two listeners may take the same address."""
    item = f.required("bind")
    if item is None:
        return ()
    entries = reader.entries(item, single_ok=True)
    if isinstance(item.value, list) and not entries:
        reader.error(item.line, item.path, "must list at least one HOST:PORT")
    addresses: list[Address] = []
    for entry in entries:
        address = reader.convert(entry, _address, None)
        if address is not None and _claim(reader, bound, address, entry):
            addresses.append(address)
    return tuple(addresses)


def _claim(reader: _Reader, bound: list[_Bound], address: Address, item: _Item) -> bool:
    """Record a listener; report it (and return False) when its address is already taken."""
    for other in bound:
        if _same_socket(address, other.address):
            where = f"{other.item.path} (line {other.item.line})"
            reader.error(item.line, item.path, f"{address} is already bound by {where}")
            return False
    bound.append(_Bound(address, item))
    return True


def _same_socket(a: Address, b: Address) -> bool:
    # 0.0.0.0:80 (or [::]:80) takes port 80 on every address of its family.
    if a.port != b.port:
        return False
    if a.host == b.host:
        return True
    wild = {"0.0.0.0": 4, "::": 6}
    return any(wild.get(x.host) == _family(y.host) for x, y in ((a, b), (b, a)))


def _family(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0  # a host name: its family is not known before resolution


def _tls(reader: _Reader, item: _Item | None) -> TlsConfig | None:
    """`tls: {cert, key}` plus optional SNI certificates, protocol floor, ciphers and HSTS.
    Files are only named here; lbd.tls loads them (and reports a bad one at this key)."""
    f = reader.fields(item, _TLS_KEYS)
    if f is None:
        return None
    cert, key = f.need("cert", _nonempty), f.need("key", _nonempty)
    certificates = tuple(reader.list_of(f.child("certificates"), _certificate(reader)))
    hsts_item = f.child("hsts")
    hsts = _hsts(reader, hsts_item) if hsts_item is not None else None
    min_version = f.get("min_version", _tls_version, _TLS.min_version)
    ciphers = f.get("ciphers", _ciphers, _TLS.ciphers)
    if not cert or not key:
        return None
    return TlsConfig(cert, key, certificates, min_version, ciphers, hsts)


def _ciphers(item: _Item) -> str:
    """An OpenSSL cipher string that selects at least one suite (checked now, not at reload)."""
    text = _nonempty(item)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        raise ValueError(f"no cipher suite matches {text!r}") from None
    return text


def _tls_version(item: _Item) -> Literal["1.2", "1.3"]:
    # YAML reads 1.2 as a float: compare the text as written.
    if item.text in _TLS_VERSIONS:
        return "1.2" if item.text == "1.2" else "1.3"
    raise ValueError(f"expected 1.2 or 1.3 (TLS 1.0 and 1.1 are never offered), got {item.text!r}")


def _certificate(reader: _Reader) -> Callable[[_Item], Certificate]:
    def convert(item: _Item) -> Certificate:
        f = reader.fields(item, _CERT_KEYS)
        if f is None:
            raise ValueError(f"expected a mapping {{cert, key}}, got {_describe(item)}")
        cert, key = f.need("cert", _nonempty), f.need("key", _nonempty)
        names = tuple(reader.list_of(f.child("names"), _host, single_ok=True))
        if not cert or not key:
            raise ValueError("needs both cert and key")
        return Certificate(cert, key, names)

    return convert


def _hsts(reader: _Reader, item: _Item) -> Hsts | None:
    """`hsts: true`, `hsts: false`, or `hsts: {max_age, include_subdomains, preload}`."""
    if isinstance(item.value, bool):
        return Hsts() if item.value else None
    f = reader.fields(item, _HSTS_KEYS)
    if f is None:
        return None
    return Hsts(
        max_age=int(f.get("max_age", _duration(), float(_HSTS.max_age))),
        include_subdomains=f.get("include_subdomains", _boolean, _HSTS.include_subdomains),
        preload=f.get("preload", _boolean, _HSTS.preload),
    )


def _per_source(reader: _Reader, item: _Item | None) -> PerSource | None:
    f = reader.fields(item, _PER_SOURCE_KEYS)
    if f is None:
        return None
    rate = f.get("requests_per_second", _rate, _PER_SOURCE.requests_per_second)
    limits = PerSource(
        requests_per_second=rate,
        burst=f.get("burst", _integer(0, 1_000_000), _PER_SOURCE.burst),
        max_connections=f.get("max_connections", _integer(0), _PER_SOURCE.max_connections),
        table_size=f.get("table_size", _integer(1, 10_000_000), _PER_SOURCE.table_size),
    )
    if not limits.requests_per_second and not limits.max_connections:
        reader.error(f.item.line, f.item.path, "set requests_per_second or max_connections")
    return limits


def _rate(item: _Item) -> float:
    value = item.value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number of requests per second, got {_describe(item)}")
    return float(value)


def _file_mode(item: _Item) -> int:
    """`0660` (YAML reads a leading-zero number as octal) or the string "0660"."""
    if isinstance(item.value, int) and not isinstance(item.value, bool):
        text = item.text
    else:
        text = _string(item)
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"expected an octal file mode like 0600, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"expected an octal file mode like 0600, got {text!r}")
    if mode & 0o007:
        raise ValueError(f"must not give others access ({text!r}): the socket controls lbd")
    return mode


def _server_tls(reader: _Reader, item: _Item) -> ServerTls | None:
    """`tls: true` (verify against the system trust store) or `tls: {verify, ca_file, sni}`."""
    if isinstance(item.value, bool):
        return ServerTls() if item.value else None
    f = reader.fields(item, _SERVER_TLS_KEYS)
    if f is None:
        return None
    return ServerTls(
        verify=f.get("verify", _boolean, True),
        ca_file=f.get("ca_file", _nonempty, None),
        sni=f.get("sni", _host, None),
    )


def _modules(reader: _Reader, item: _Item | None) -> tuple[Module, ...]:
    """First match wins; "other" is what the unmatched requests are counted as."""
    modules: list[Module] = []
    seen: dict[str, int] = {}
    for entry in reader.entries(item) if item else []:
        f = reader.fields(entry, _MODULE_KEYS)
        if f is None:
            continue
        name = f.need("name", _name)
        name_item = f.child("name")
        match = _matcher(reader, f)
        url_policy = f.get("url_policy", _one_of(_URL_POLICIES), None)
        if name is None or name_item is None:
            continue
        if name == "other":
            reader.error(
                name_item.line, name_item.path, "'other' is reserved for unmatched requests"
            )
        elif name in seen:
            reader.error(
                name_item.line,
                name_item.path,
                f"duplicate module name (first at line {seen[name]})",
            )
        else:
            seen[name] = name_item.line
            modules.append(Module(name, match, url_policy))
    return tuple(modules)


def _matcher(reader: _Reader, f: _Fields) -> Matcher:
    """The matcher keys of `f` (a `when:` mapping or a module entry); all must hold."""
    return Matcher(
        path=f.get("path", _url_path, None),
        path_prefix=f.get("path_prefix", _url_path, None),
        path_regex=f.get("path_regex", _regex, None),
        host=f.get("host", _host, None),
        method=f.get("method", _token, None),
        header=_header_match(reader, f.child("header")),
        query=_query_match(reader, f.child("query")),
        src=f.get("src", _cidr, None),
    )


def _header_match(reader: _Reader, item: _Item | None) -> HeaderMatch | None:
    f = reader.fields(item, ("name", "equals", "regex", "present"))
    if f is None or item is None:
        return None
    name = f.need("name", _token)
    tests = [key for key in ("equals", "regex", "present") if f.has(key)]
    if len(tests) != 1:
        got = ", ".join(tests) if tests else "none"
        reader.error(
            item.line, item.path, f"needs exactly one of equals, regex, present (got {got})"
        )
    match = HeaderMatch(
        name=name or "",
        equals=f.get("equals", _header_value, None),
        regex=f.get("regex", _regex, None),
        present=f.get("present", _boolean, None),
    )
    return match if name else None


def _query_match(reader: _Reader, item: _Item | None) -> QueryMatch | None:
    f = reader.fields(item, ("name", "equals"))
    if f is None:
        return None
    name = f.need("name", _nonempty)
    equals = f.get("equals", _string, None)
    return QueryMatch(name, equals) if name else None


def _rules(
    reader: _Reader, item: _Item | None, backend_names: Collection[str] | None
) -> list[Rule]:
    rules = [
        _rule(reader, entry, backend_names) for entry in (reader.entries(item) if item else [])
    ]
    return [rule for rule in rules if rule is not None]


def _rule(reader: _Reader, item: _Item, backend_names: Collection[str] | None) -> Rule | None:
    f = reader.fields(item, _RULE_KEYS)
    if f is None:
        return None
    when_item = f.required("when")
    when_fields = reader.fields(when_item, _MATCHER_KEYS)
    _check_actions(reader, item, f)
    return Rule(
        when=_matcher(reader, when_fields) if when_fields else Matcher(),
        use_backend=f.get("use_backend", _backend_ref(backend_names), None),
        deny=f.get("deny", _status(400, 599), None),
        redirect=_redirect(reader, f.child("redirect")),
        return_=_return(reader, f.child("return")),
        set_header=_set_headers(reader, f.child("set_header")),
        del_header=tuple(reader.list_of(f.child("del_header"), _token, single_ok=True)),
        line=item.line,
    )


def _check_actions(reader: _Reader, item: _Item, f: _Fields) -> None:
    """One terminal action, or header edits alone (which fall through to later rules)."""
    terminal = [key for key in _TERMINAL_ACTIONS if f.has(key)]
    edits = [key for key in _HEADER_ACTIONS if f.has(key)]
    if len(terminal) > 1:
        reader.error(item.line, item.path, f"a rule takes one action, got {', '.join(terminal)}")
    elif terminal and edits:
        reader.error(
            item.line,
            item.path,
            f"{' and '.join(edits)} cannot be combined with {terminal[0]}: "
            "put the header edits in a rule of their own before it",
        )
    elif not terminal and not edits:
        wanted = ", ".join((*_TERMINAL_ACTIONS, *_HEADER_ACTIONS))
        reader.error(item.line, item.path, f"a rule needs an action: one of {wanted}")


def _redirect(reader: _Reader, item: _Item | None) -> Redirect | None:
    f = reader.fields(item, ("location", "code"))
    if f is None:
        return None
    location = f.need("location", _location)
    code = f.get("code", _redirect_code, _REDIRECT.code)
    return Redirect(location or "", code)


def _return(reader: _Reader, item: _Item | None) -> ReturnAction | None:
    f = reader.fields(item, ("status", "body", "content_type"))
    if f is None or item is None:
        return None
    action = ReturnAction(
        status=f.get("status", _status(200, 599), _RETURN.status),
        body=f.get("body", _string, _RETURN.body),
        content_type=f.get("content_type", _header_value, _RETURN.content_type),
    )
    if action.body and action.status in (204, 304):
        reader.error(item.line, item.path, f"a {action.status} response cannot have a body")
    return action


def _set_headers(reader: _Reader, item: _Item | None) -> tuple[tuple[str, str], ...]:
    """`set_header: {X-Forwarded-Proto: https, ...}`, in the order written."""
    if item is None:
        return ()
    if not isinstance(item.value, dict):
        reader.error(item.line, item.path, f"expected a mapping NAME: VALUE, got {_describe(item)}")
        return ()
    out: list[tuple[str, str]] = []
    for name, value in item.value.items():
        if not _TOKEN.fullmatch(name):
            reader.error(value.key_line, value.path, "invalid header name")
            continue
        text = reader.convert(value, _header_value, None)
        if text is not None:
            out.append((name, text))
    return tuple(out)


# --- backends -----------------------------------------------------------------------------------


def _backend(reader: _Reader, name: str, item: _Item, defaults: _Defaults) -> Backend | None:
    f = reader.fields(item, _BACKEND_KEYS)
    if f is None:
        return None
    check_item = f.child("health_check")
    check = _health_check(reader, check_item, HealthCheck()) if check_item else None
    return Backend(
        name=name,
        servers=_servers(reader, f, check),
        balance=_balance_settings(reader, f),
        health_check=check,
        observe=_observe(reader, f.child("observe")),
        sticky=_sticky(reader, f.child("sticky")),
        timeouts=_timeouts(reader, f.child("timeouts"), defaults.timeouts),
        retries=f.get("retries", _integer(0, 100), defaults.retries),
        redispatch=f.get("redispatch", _boolean, defaults.redispatch),
        retry_on=_retry_on(reader, f.child("retry_on"), defaults.retry_on),
        allbackups=f.get("allbackups", _boolean, _BACKEND.allbackups),
        pool_max_idle=f.get("pool_max_idle", _integer(0, 10_000), _BACKEND.pool_max_idle),
        pool_idle_timeout=f.get("pool_idle_timeout", _duration(), _BACKEND.pool_idle_timeout),
    )


def _balance_settings(reader: _Reader, f: _Fields) -> Balance:
    default: tuple[Algorithm, str | None] = (_BALANCE_DEFAULTS.algorithm, None)
    algorithm, arg = f.get("balance", _balance, default)
    hash_type = f.get("hash_type", _one_of(_HASH_TYPES), _BALANCE_DEFAULTS.hash_type)
    factor = f.get(
        "hash_balance_factor", _hash_balance_factor, _BALANCE_DEFAULTS.hash_balance_factor
    )
    factor_item = f.child("hash_balance_factor")
    if factor and factor_item and hash_type != "consistent":
        reader.error(factor_item.line, factor_item.path, "only applies to hash_type: consistent")
    for key in ("uri_whole", "uri_depth"):  # read by `uri` alone: say so rather than ignore
        child = f.child(key)
        if child is not None and algorithm != "uri":
            reader.error(child.key_line, child.path, "only applies to balance: uri")
    return Balance(
        algorithm=algorithm,
        arg=arg,
        hash_type=hash_type,
        hash_balance_factor=factor,
        uri_whole=f.get("uri_whole", _boolean, _BALANCE_DEFAULTS.uri_whole),
        uri_depth=f.get("uri_depth", _integer(0, 100), _BALANCE_DEFAULTS.uri_depth),
        draws=f.get("draws", _integer(1, 100), _BALANCE_DEFAULTS.draws),
    )


def _servers(reader: _Reader, f: _Fields, check: HealthCheck | None) -> tuple[Server, ...]:
    """Non-empty; names unique in the backend, and persistence cookies too."""
    item = f.required("servers")
    if item is None:
        return ()
    entries = reader.entries(item)
    if isinstance(item.value, list) and not entries:
        reader.error(item.line, item.path, "must list at least one server")
    servers: list[Server] = []
    names: dict[str, int] = {}
    cookies: dict[str, int] = {}
    for entry in entries:
        server = _server(reader, entry, check)
        # checked on the entry as written, so a broken entry still reserves its name
        fresh = _unique(reader, names, _entry(entry, "name"), "name")
        fresh = _unique(reader, cookies, _entry(entry, "cookie"), "cookie") and fresh
        if server is not None and fresh:
            servers.append(server)
    return tuple(servers)


def _entry(item: _Item, key: str) -> _Item | None:
    """The scalar under `key` in a mapping item, if there is one."""
    child = item.value.get(key) if isinstance(item.value, dict) else None
    if not isinstance(child, _Item) or child.value is None or isinstance(child.value, dict | list):
        return None
    return child


def _unique(reader: _Reader, seen: dict[str, int], item: _Item | None, what: str) -> bool:
    """Report `item` when an earlier server used the same value for `what`."""
    if item is None:
        return True
    if item.text in seen:
        message = f"duplicate server {what} (first at line {seen[item.text]})"
        reader.error(item.line, item.path, message)
        return False
    seen[item.text] = item.line
    return True


def _server(reader: _Reader, item: _Item, check: HealthCheck | None) -> Server | None:
    f = reader.fields(item, _SERVER_KEYS)
    if f is None:
        return None
    name, address = f.need("name", _name), f.need("address", _address)
    # the server's own check starts from the backend's: only the keys given differ
    own_item = f.child("health_check")
    own_check = _health_check(reader, own_item, check or HealthCheck()) if own_item else None
    server = Server(
        name=name or "",
        address=address or Address("", 0),
        weight=f.get("weight", _integer(0, 256), _SERVER.weight),
        maxconn=f.get("maxconn", _integer(0), _SERVER.maxconn),
        maxqueue=f.get("maxqueue", _integer(0), _SERVER.maxqueue),
        backup=f.get("backup", _boolean, _SERVER.backup),
        state=f.get("state", _one_of(_ADMIN_STATES), _SERVER.state),
        slowstart=f.get("slowstart", _duration(positive=False), _SERVER.slowstart),
        cookie=f.get("cookie", _cookie_value, None),
        health_check=own_check,
        check=f.get("check", _boolean, _SERVER.check),
        tls=_server_tls(reader, tls_item) if (tls_item := f.child("tls")) is not None else None,
    )
    return server if name and address else None


def _cookie_value(item: _Item) -> str:
    text = _string(item)
    if not _COOKIE_VALUE.fullmatch(text):
        raise ValueError(f"not a valid cookie value: {text!r}")
    if "|" in text or "~" in text:
        # lbd appends dates after '|' (maxidle/maxlife) and the application's value after '~'
        raise ValueError(f"'|' and '~' are reserved in a persistence cookie value: {text!r}")
    return text


def _health_check(reader: _Reader, item: _Item | None, base: HealthCheck) -> HealthCheck:
    """Each key given overrides `base`; the others are inherited."""
    f = reader.fields(item, _CHECK_KEYS)
    if f is None:
        return base
    return HealthCheck(
        type=f.get("type", _one_of(_CHECK_TYPES), base.type),
        path=f.get("path", _url_path, base.path),
        method=f.get("method", _token, base.method),
        host=f.get("host", _host, base.host),
        expect_status=f.get("expect_status", _expect_status, base.expect_status),
        expect_body=f.get("expect_body", _string, base.expect_body),
        interval=f.get("interval", _duration(), base.interval),
        fastinterval=f.get("fastinterval", _duration(), base.fastinterval),
        downinterval=f.get("downinterval", _duration(), base.downinterval),
        timeout=f.get("timeout", _duration(), base.timeout),
        rise=f.get("rise", _integer(1, 1000), base.rise),
        fall=f.get("fall", _integer(1, 1000), base.fall),
        init_state=f.get("init_state", _one_of(_INIT_STATES), base.init_state),
    )


def _observe(reader: _Reader, item: _Item | None) -> Observe | None:
    f = reader.fields(item, _OBSERVE_KEYS)
    if f is None:
        return None
    return Observe(
        mode=f.get("mode", _one_of(_OBSERVE_MODES), _OBSERVE.mode),
        error_limit=f.get("error_limit", _integer(1, 1_000_000), _OBSERVE.error_limit),
        on_error=f.get("on_error", _one_of(_ON_ERROR), _OBSERVE.on_error),
    )


def _sticky(reader: _Reader, item: _Item | None) -> Sticky | None:
    f = reader.fields(item, ("cookie", "table"))
    if f is None or item is None:
        return None
    if not f.has("cookie") and not f.has("table"):
        reader.error(item.key_line, item.path, "needs cookie, table or both")
    return Sticky(
        cookie=_cookie_sticky(reader, f.child("cookie")),
        table=_stick_table(reader, f.child("table")),
    )


def _cookie_sticky(reader: _Reader, item: _Item | None) -> CookieSticky | None:
    f = reader.fields(item, _COOKIE_KEYS)
    if f is None:
        return None
    cookie = CookieSticky(
        name=f.get("name", _token, _COOKIE.name),
        mode=f.get("mode", _one_of(_COOKIE_MODES), _COOKIE.mode),
        indirect=f.get("indirect", _boolean, _COOKIE.indirect),
        nocache=f.get("nocache", _boolean, _COOKIE.nocache),
        preserve=f.get("preserve", _boolean, _COOKIE.preserve),
        httponly=f.get("httponly", _boolean, _COOKIE.httponly),
        secure=f.get("secure", _boolean, _COOKIE.secure),
        samesite=f.get("samesite", _one_of(_SAMESITE), None),
        domain=f.get("domain", _cookie_attr(_host), None),
        path=f.get("path", _cookie_attr(_url_path), None),
        maxidle=f.get("maxidle", _duration(), None),
        maxlife=f.get("maxlife", _duration(), None),
    )
    samesite = f.child("samesite")
    if samesite is not None and cookie.samesite == "None" and not cookie.secure:
        # browsers drop a SameSite=None cookie that is not Secure: persistence would never hold
        reader.error(samesite.line, samesite.path, "samesite: None needs secure: true")
    if cookie.mode != "insert":
        # rewrite/prefix edit the application's own cookie: lbd sets no attribute and no date
        for key in _INSERT_ONLY:
            child = f.child(key)
            if child is not None:
                reader.error(
                    child.line, child.path, f"only with mode: insert (mode is {cookie.mode})"
                )
        preserve = f.child("preserve")
        if preserve is not None and cookie.preserve and not cookie.indirect:
            message = "only with mode: insert or indirect: true (nothing to preserve)"
            reader.error(preserve.line, preserve.path, message)
    return cookie


def _cookie_attr(convert: Callable[[_Item], str]) -> Callable[[_Item], str]:
    """A Set-Cookie attribute value: `;` would add attributes of its own, `,` splits the header
    for old parsers; spaces, controls and non-ASCII are outside RFC 6265 §4.1.1 av-octet."""

    def checked(item: _Item) -> str:
        text = convert(item)
        bad = next((c for c in text if c in ";," or not "!" <= c <= "~"), None)
        if bad is not None:
            raise ValueError(f"{bad!r} is not allowed in a cookie attribute, got {text!r}")
        return text

    return checked


# Keys of `sticky.cookie` that only an inserted cookie can carry.
_INSERT_ONLY = ("httponly", "secure", "samesite", "domain", "path", "maxidle", "maxlife")


def _stick_table(reader: _Reader, item: _Item | None) -> StickTable | None:
    f = reader.fields(item, _TABLE_KEYS)
    if f is None or item is None:
        return None
    table = StickTable(
        on=f.get("on", _one_of(_TABLE_ON), _TABLE.on),
        learn_cookie=f.get("learn_cookie", _token, None),
        expire=f.get("expire", _duration(), _TABLE.expire),
        size=f.get("size", _integer(1, 10_000_000), _TABLE.size),
    )
    if table.on == "cookie" and table.learn_cookie is None:
        path = _join(item.path, "learn_cookie")
        reader.error(item.key_line, path, "required when on: cookie (the cookie to learn)")
    learn = f.child("learn_cookie")
    if table.on == "src" and learn is not None:
        reader.error(learn.line, learn.path, "only with on: cookie (on: src keys on the address)")
    return table
