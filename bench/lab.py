"""The test bench: one nginx backend and the proxies under test, each on its own port.

Placement: the proxy under test runs on the first usable CPU; wrk and the backend share the
second, so the proxy never competes with the load it is measured under. With a single CPU
nothing is pinned (and the numbers say less).
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import configs
from procs import StartError, Supervisor, free_port, usable_cpus, wait_port

PROXIES = ("lbd", "haproxy", "nginx", "direct")
# Not in the default run: lbd writing an httplog access line per request to a file.
EXTRA_PROXIES = ("lbd-log",)
REPO = Path(__file__).resolve().parent.parent
# `python -m lbd` must find this checkout's package even in a venv without `pip install -e .`.
LBD_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@dataclass(frozen=True)
class Placement:
    """Which CPU the proxy and the load side (wrk + backend) run on; None = unpinned."""

    proxy_cpu: int | None
    load_cpu: int | None

    @classmethod
    def detect(cls, allow_pinning: bool = True) -> Placement:
        cpus = usable_cpus()
        if not allow_pinning or len(cpus) < 2:
            return cls(None, None)
        return cls(cpus[0], cpus[1])

    @property
    def pinned(self) -> bool:
        return self.proxy_cpu is not None


@dataclass(frozen=True)
class Endpoint:
    """Where load goes; `pid` is the proxy's root process (None for "direct": nothing between)."""

    name: str
    port: int
    pid: int | None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Lab:
    """Starts the backend and proxies under `workdir`; `supervisor` stops them all."""

    def __init__(self, workdir: Path, placement: Placement, nofile: int) -> None:
        self.workdir = workdir
        self.placement = placement
        self.nofile = nofile
        self.supervisor = Supervisor(workdir)
        self.backend_port = 0

    def start_backend(self) -> None:
        configs.write_bodies(self.workdir / "www")
        self.backend_port = free_port()
        text = configs.nginx_backend(
            self.workdir, self.backend_port, self.workdir / "www", self.nofile
        )
        self._start("backend", self._nginx_argv("backend", text), self.placement.load_cpu,
                    self.backend_port)  # fmt: skip
        verify(Endpoint("backend", self.backend_port, None))

    def start_proxy(self, name: str) -> Endpoint:
        """Start proxy `name` (one of PROXIES) and check it relays every body intact."""
        if name == "direct":
            endpoint = Endpoint("direct", self.backend_port, None)
        else:
            port = free_port()
            argv = self._proxy_argv(name, port)
            proc = self._start(name, argv, self.placement.proxy_cpu, port)
            endpoint = Endpoint(name, port, proc)
        verify(endpoint)
        return endpoint

    def stop(self) -> None:
        self.supervisor.stop_all()

    # --- helpers --------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], cpu: int | None, port: int) -> int:
        env = LBD_ENV if name.startswith("lbd") else None
        proc = self.supervisor.spawn(name, argv, cpu, env)
        try:
            wait_port(port, proc)
        except StartError as e:
            raise StartError(f"{name}: {e}\n{self.supervisor.log_tail(name)}") from None
        return proc.pid

    def _proxy_argv(self, name: str, port: int) -> list[str]:
        builders: dict[str, Callable[[int], list[str]]] = {
            "lbd": self._lbd_argv,
            "lbd-log": self._lbd_log_argv,
            "haproxy": self._haproxy_argv,
            "nginx": lambda p: self._nginx_argv(
                "proxy", configs.nginx_proxy(self.workdir, p, self.backend_port, self.nofile)
            ),
        }
        if name not in builders:
            choices = ", ".join(PROXIES + EXTRA_PROXIES)
            raise ValueError(f"unknown proxy {name!r}; choose from {choices}")
        return builders[name](port)

    def _write(self, filename: str, text: str) -> Path:
        path = self.workdir / filename
        path.write_text(text)
        return path

    def _nginx_argv(self, name: str, text: str) -> list[str]:
        (self.workdir / f"{name}-tmp").mkdir(exist_ok=True)
        conf = self._write(f"{name}-nginx.conf", text)
        error_log = self.workdir / f"{name}-error.log"
        return [tool("nginx"), "-p", str(self.workdir), "-c", str(conf), "-e", str(error_log)]

    def _haproxy_argv(self, port: int) -> list[str]:
        conf = self._write("haproxy.cfg", configs.haproxy(port, self.backend_port, self.nofile))
        return [tool("haproxy"), "-db", "-f", str(conf)]

    def _lbd_argv(self, port: int) -> list[str]:
        conf = self._write("lbd.yaml", configs.lbd(port, self.backend_port))
        return [sys.executable, "-m", "lbd", "run", "-c", str(conf)]

    def _lbd_log_argv(self, port: int) -> list[str]:
        log = self.workdir / "lbd-access.log"
        conf = self._write("lbd-log.yaml", configs.lbd(port, self.backend_port, access=str(log)))
        return [sys.executable, "-m", "lbd", "run", "-c", str(conf)]


def tool(name: str) -> str:
    """Absolute path of a required program (Debian puts nginx and haproxy in /usr/sbin)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise StartError(f"{name} not found: run `make tools` (bench/install-tools.sh)")
    return found


def fetch(port: int, path: str) -> tuple[int, int]:
    """(status, body length) of one GET to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def verify(endpoint: Endpoint) -> None:
    """Raise StartError unless every body comes back 200 with its exact length."""
    for path, size in configs.BODIES.items():
        try:
            status, length = fetch(endpoint.port, path)
        except (OSError, http.client.HTTPException) as e:
            raise StartError(f"{endpoint.name}: GET {path} failed: {e!r}") from None
        if (status, length) != (200, size):
            raise StartError(
                f"{endpoint.name}: GET {path} gave {status} with {length} bytes, "
                f"expected 200 with {size}"
            )
