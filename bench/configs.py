"""Configuration files the benchmark generates: the backends and every proxy under test.

Rules: every proxy gets the same job in a profile — `plain` (one nginx backend, no logging),
`allon` (what a hospital runs: URL checks, five modules, a routing rule, an access log to a file,
and the HAProxy/nginx equivalents) and `ehr` (three mock EHR servers, round robin). HTTP/1.1
keep-alive on both legs, one worker/thread. Settings that differ from a product's defaults are
there to keep the comparison fair and say why.
"""

from __future__ import annotations

from pathlib import Path

# Paths the backend serves, and the exact body length each must return.
BODIES: dict[str, int] = {"/200b": 200, "/16k": 16 * 1024, "/1m": 1024 * 1024}
POST_BYTES = 64 * 1024
# The demo's modules (conf/demo.yaml), first match wins; /static also has its own backend.
MODULES = ("accueil", "rendez-vous", "comptes-rendus", "dmu", "static")
_MODULE_BODY = "m" * 199  # + "\n": the module pages answer 200 B, like /200b


def write_bodies(docroot: Path) -> None:
    """Static files for BODIES; world-readable because nginx workers run as nobody under root."""
    docroot.mkdir(parents=True, exist_ok=True)
    docroot.chmod(0o755)
    for path, size in BODIES.items():
        body = docroot / path.lstrip("/")
        body.write_bytes(b"x" * (size - 1) + b"\n")
        body.chmod(0o644)


def nginx_backend(prefix: Path, port: int, docroot: Path, nofile: int) -> str:
    """The origin: static files with an open-file cache, sendfile, keep-alive.

    /post reads and discards a 64 KiB body and answers 200 (the load path); /post-check buffers
    the body and hands it to /sink, which answers the Content-Length it received: a proxy that
    did not forward the whole body gets a 408 there instead (client_body_timeout 3s). Module
    paths answer 200 B from memory for the `allon` profile.
    """
    main, http = _nginx_main_parts(prefix, "backend", nofile)
    modules = "|".join(MODULES)
    return f"""{main}
http {{{http}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=1h;
    client_max_body_size 1m;
    client_body_buffer_size 128k;
    client_body_timeout 3s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {docroot};
        location / {{ }}
        location = /post {{ return 200 "posted\\n"; }}
        location = /post-check {{ proxy_pass http://127.0.0.1:{port}/sink; }}
        location = /sink {{ return 200 "$http_content_length\\n"; }}
        location ~ ^/({modules})/ {{ return 200 "{_MODULE_BODY}\\n"; }}
    }}
}}
"""


def _nginx_upstream(ports: list[int]) -> str:
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in ports)
    return f"""    upstream b {{
{servers}        keepalive 64;
        keepalive_requests 1000000;
    }}
"""


def _nginx_pass(upstream: str) -> str:
    return f"""proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            client_max_body_size 1m;"""


def nginx_proxy(
    prefix: Path, name: str, port: int, ports: list[int], nofile: int, access: str | None = None
) -> str:
    """nginx as a reverse proxy with upstream keep-alive.

    proxy_max_temp_file_size 0: without it nginx spools the part of a 1 MiB response that does
    not fit its buffers to a temp file on disk; HAProxy and lbd stream, so nginx streams too
    (proxy_request_buffering off does the same for request bodies). With `access`, the `allon`
    variant: a location per module, /static to its own upstream, an access log to that file.
    """
    main, http = _nginx_main_parts(prefix, name, nofile)
    if access is None:
        locations = f"        location / {{\n            {_nginx_pass('b')}\n        }}\n"
        log = ""
    else:
        log = f"    access_log {access} combined;\n"
        locations = "".join(
            f"        location /{m}/ {{\n            {_nginx_pass('st' if m == 'static' else 'b')}"
            "\n        }\n"
            for m in MODULES
        )
        locations += "        location / { return 404; }\n"
    static = _nginx_upstream(ports).replace("upstream b", "upstream st") if access else ""
    return f"""{main}
http {{{http}{log}{_nginx_upstream(ports)}{static}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{locations}    }}
}}
"""


def _nginx_main_parts(prefix: Path, name: str, nofile: int) -> tuple[str, str]:
    """(main-context directives, http-context directives) shared by every nginx instance."""
    tmp = prefix / f"{name}-tmp"
    main = f"""daemon off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/{name}.pid;
error_log {prefix}/{name}-error.log warn;
events {{ worker_connections {nofile // 2}; }}
"""
    http = f"""
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
"""
    return main, http


def haproxy(port: int, ports: list[int], nofile: int, allon: bool = False) -> str:
    """HAProxy in one thread, keep-alive both sides, idle server connections shared.

    `allon`: the equivalent of lbd's allon profile — `option httplog` to stdout (the bench sends
    stdout to a file), a deny for URLs lbd's `url_policy: reject` refuses (dot segments, encoded
    dots and slashes, NUL), a variable naming the module per path prefix, and /static routed to
    its own backend.
    """
    maxconn = max(1000, (nofile - 200) // 2)  # each client may hold a server connection too
    servers = "".join(f"    server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports, 1))
    log_global = "    log stdout format raw local0\n" if allon else ""
    log_defaults = "    log global\n    option httplog\n" if allon else ""
    front = "    default_backend b\n"
    static = ""
    if allon:
        modules = "".join(
            f"    http-request set-var(txn.module) str({m}) if {{ path_beg /{m}/ }}\n"
            for m in MODULES
        )
        front = (
            "    http-request deny deny_status 400 if { path_sub /../ /./ } "
            "|| { path_end /.. /. } || { path_sub -i %2e %2f %00 %5c }\n"
            f"{modules}"
            "    use_backend st if { path_beg /static/ }\n"
            "    default_backend b\n"
        )
        static = f"\nbackend st\n{servers}"
    return f"""global
    nbthread 1
    maxconn {maxconn}
{log_global}
defaults
    mode http
{log_defaults}    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:{port}
{front}
backend b
{servers}{static}"""


def lbd(
    port: int, ports: list[int], access: str = "off", allon: bool = False, workers: int = 1
) -> str:
    """lbd's file: the smallest one (CONTRACT.md) with the access log off ("off" quoted: YAML
    1.1) unless `access` names a file; `allon` adds url_policy: reject, the demo's modules and
    its /static rule."""
    servers = "".join(
        f'      - {{name: s{i}, address: "127.0.0.1:{p}"}}\n' for i, p in enumerate(ports, 1)
    )
    front = ""
    static = ""
    if allon:
        modules = "".join(f"      - {{name: {m}, path_prefix: /{m}/}}\n" for m in MODULES)
        front = (
            "    url_policy: reject\n    modules:\n" + modules + "    rules:\n"
            "      - {when: {path_prefix: /static/}, use_backend: st}\n"
        )
        static = f"  st:\n    servers:\n{servers}"
    return f"""global:
  workers: {workers}
  log:
    access: "{access}"
    format: httplog
frontends:
  bench:
    bind: ["127.0.0.1:{port}"]
{front}    default_backend: b
backends:
  b:
    servers:
{servers}{static}"""
