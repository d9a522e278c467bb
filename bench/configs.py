"""Configuration files the benchmark generates: the nginx backend and the three proxies.

Every proxy gets the same job: one listener on 127.0.0.1, one upstream server (the nginx
backend), HTTP/1.1 keep-alive on both legs, no access logging, one worker/thread. Settings that
differ from a product's defaults are there to keep the comparison fair and say why.
"""

from __future__ import annotations

from pathlib import Path

# Paths the backend serves, and the exact body length each must return.
BODIES: dict[str, int] = {"/200b": 200, "/16k": 16 * 1024, "/1m": 1024 * 1024}


def write_bodies(docroot: Path) -> None:
    """Static files for BODIES; world-readable because nginx workers run as nobody under root."""
    docroot.mkdir(parents=True, exist_ok=True)
    docroot.chmod(0o755)
    for path, size in BODIES.items():
        body = docroot / path.lstrip("/")
        body.write_bytes(b"x" * (size - 1) + b"\n")
        body.chmod(0o644)


def nginx_backend(prefix: Path, port: int, docroot: Path, nofile: int) -> str:
    """The origin: static files with an open-file cache, sendfile, keep-alive."""
    main, http = _nginx_main_parts(prefix, "backend", nofile)
    return f"""{main}
http {{{http}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=1h;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {docroot};
        location / {{ }}
    }}
}}
"""


def nginx_proxy(prefix: Path, port: int, backend_port: int, nofile: int) -> str:
    """nginx as a reverse proxy with upstream keep-alive.

    proxy_max_temp_file_size 0: without it nginx spools the part of a 1 MiB response that does
    not fit its buffers to a temp file on disk; HAProxy and lbd stream, so nginx streams too.
    """
    main, http = _nginx_main_parts(prefix, "proxy", nofile)
    return f"""{main}
http {{{http}
    upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def _nginx_main_parts(prefix: Path, name: str, nofile: int) -> tuple[str, str]:
    """(main-context directives, http-context directives) shared by both nginx instances."""
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


def haproxy(port: int, backend_port: int, nofile: int) -> str:
    """HAProxy in one thread, keep-alive both sides, idle server connections shared, no logs."""
    maxconn = max(1000, (nofile - 200) // 2)  # each client may hold a server connection too
    return f"""global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:{port}
    default_backend b

backend b
    server s1 127.0.0.1:{backend_port}
"""


def lbd(port: int, backend_port: int, access: str = "off") -> str:
    """The smallest lbd file (CONTRACT.md); the access log off ("off" quoted: YAML 1.1) unless
    `access` names a file."""
    return f"""global:
  log:
    access: "{access}"
frontends:
  bench:
    bind: ["127.0.0.1:{port}"]
    default_backend: b
backends:
  b:
    servers:
      - {{name: s1, address: "127.0.0.1:{backend_port}"}}
"""
