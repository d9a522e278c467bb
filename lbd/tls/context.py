"""SSL contexts: TLS termination on frontends (several certificates chosen by SNI) and TLS to
servers.

Rules:
- TLS 1.2 is the floor (1.0 and 1.1 are never offered), TLS 1.2 suites are Mozilla's
  "intermediate" list unless the frontend names others, ALPN offers only `http/1.1`.
- Loading reads files: it runs at startup and, on reload, off the event loop before the swap. A
  bad file rejects the whole reload (as nginx and HAProxy do), so the old certificates keep
  serving; the error names the file, line and key of the configuration.
- A listener's socket outlives reloads, so its SSLContext does too: it holds no certificate of
  its own. Its `sni_callback` asks, at each handshake, for the frontend's current `FrontendTls`
  (found through the runtime snapshot) and switches the connection to the context whose
  certificate matches the name the client sent (the first certificate when none matches, or
  when the client sent no name). The protocol floor and cipher list are taken from the
  listening context before the callback runs, so a reload applies them to it (`apply_policy`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from lbd.config.schema import Certificate, Config, ServerTls, TlsConfig
from lbd.errors import ConfigError, ConfigErrors

ALPN = ["http/1.1"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class FrontendTls:
    """The loaded certificates of one frontend: a context per certificate, indexed by the DNS
    names it is valid for. Immutable once built; a reload builds a new one."""

    __slots__ = ("config", "default", "exact", "hsts_header", "wildcard")

    def __init__(self, config: TlsConfig, contexts: list[tuple[ssl.SSLContext, list[str]]]):
        self.config = config
        self.default = contexts[0][0]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.org" for "*.example.org"
        for ctx, names in contexts:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], ctx)
                else:
                    self.exact.setdefault(name, ctx)
        hsts = config.hsts
        header = b""
        if hsts is not None:
            header = b"Strict-Transport-Security: max-age=%d" % hsts.max_age
            if hsts.include_subdomains:
                header += b"; includeSubDomains"
            if hsts.preload:
                header += b"; preload"
            header += b"\r\n"
        self.hsts_header = header  # a whole header line for responses, b"" when not set

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for the name a client sent (RFC 6066 SNI; a wildcard covers one label)."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            ctx = self.wildcard.get(parent)
        return ctx if ctx is not None else self.default


@dataclass(slots=True)
class LoadedTls:
    """Every SSL context one configuration needs, loaded before that configuration runs."""

    frontends: dict[str, FrontendTls]
    servers: dict[tuple[str, str], ssl.SSLContext]  # (backend, server) → client context


def load_tls(cfg: Config) -> LoadedTls:
    """Load every certificate, key and CA file `cfg` names (blocking file reads); raise
    ConfigErrors naming the key of each file that cannot be used."""
    errors: list[ConfigError] = []
    frontends: dict[str, FrontendTls] = {}
    for fe in cfg.frontends:
        if fe.tls is None:
            continue
        base = f"frontends.{fe.name}.tls"
        entries = [(Certificate(fe.tls.cert, fe.tls.key), base)]
        entries += [(c, f"{base}.certificates[{i}]") for i, c in enumerate(fe.tls.certificates)]
        contexts: list[tuple[ssl.SSLContext, list[str]]] = []
        for cert, key_path in entries:
            unreadable = _unreadable(cert)
            if unreadable is not None:
                which, message = unreadable
                errors.append(_error(cfg, f"{key_path}.{which}", message))
                continue
            try:
                contexts.append((certificate_context(fe.tls, cert), _names(cert)))
            except (OSError, ssl.SSLError, ValueError) as exc:
                message = f"cannot load certificate {cert.cert} (key {cert.key}): {_why(exc)}"
                errors.append(_error(cfg, f"{key_path}.cert", message))
        if len(contexts) == len(entries):
            frontends[fe.name] = FrontendTls(fe.tls, contexts)
    servers: dict[tuple[str, str], ssl.SSLContext] = {}
    for be in cfg.backends:
        for i, server in enumerate(be.servers):
            if server.tls is None:
                continue
            try:
                servers[(be.name, server.name)] = client_context(server.tls)
            except (OSError, ssl.SSLError) as exc:
                key = f"backends.{be.name}.servers[{i}].tls"
                message = f"cannot load ca_file {server.tls.ca_file}: {_why(exc)}"
                errors.append(_error(cfg, key, message))
    if errors:
        raise ConfigErrors(errors)
    return LoadedTls(frontends, servers)


def certificate_context(tls: TlsConfig, cert: Certificate) -> ssl.SSLContext:
    """A server context holding one certificate chain (raises OSError / SSLError)."""
    ctx = _server_base(tls)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def listener_context(current: Callable[[], FrontendTls | None], tls: TlsConfig) -> ssl.SSLContext:
    """The context a TLS listener is created with: no certificate, an SNI callback that picks
    one from whatever `current()` returns at handshake time."""
    ctx = _server_base(tls)

    def choose(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        loaded = current()
        if loaded is None:  # the frontend lost `tls:` (a reload refuses that): fail closed
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        conn.context = loaded.select(server_name)
        return None

    ctx.sni_callback = choose
    return ctx


def apply_policy(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    """Give a listening context the (possibly reloaded) protocol floor and TLS 1.2 suites."""
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(tls.ciphers)


def client_context(tls: ServerTls) -> ssl.SSLContext:
    """A context for connecting to a server: its certificate verified against `ca_file` (or
    the system trust store) and its name, unless `verify: false`."""
    if tls.verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _server_base(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    apply_policy(ctx, tls)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _names(cert: Certificate) -> list[str]:
    """The DNS names a certificate serves: as configured, else its subjectAltName DNS entries,
    else its subject CN (what HAProxy's `crt` does)."""
    if cert.names:
        return list(cert.names)
    # The ssl module has no public PEM parser; this is the one its own tests use.
    decoded = ssl._ssl._test_decode_cert(cert.cert)  # type: ignore[attr-defined]
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [value for key, value in rdn if key == "commonName"]
    return names


def _unreadable(cert: Certificate) -> tuple[str, str] | None:
    """("cert" | "key", message) for a file that cannot be opened, to name the right key."""
    for which, path in (("cert", cert.cert), ("key", cert.key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return which, f"cannot read {path}: {exc.strerror or exc}"
    return None


def _error(cfg: Config, key: str, message: str) -> ConfigError:
    line = cfg.lines.get(key) or cfg.lines.get(key.rsplit(".", 1)[0], 1)
    return ConfigError(cfg.path, line, key, message)


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
