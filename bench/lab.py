"""The test bench: the backends and the proxies under test, each on its own port.

Rules: a proxy is started once per profile it takes part in (`plain`, `allon`, `ehr`: see
configs.py) and must prove it relays correctly before it is measured, or it is skipped with its
log tail. Placement: the proxy under test runs on the first usable CPU; wrk and the backends share
the second, so the proxy never competes with the load it is measured under. `lbd-w2` (two
workers) is not pinned: pinning two workers to one CPU would measure nothing. With a single CPU
nothing is pinned (and the numbers say less).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import configs
from procs import StartError, Supervisor, free_port, process_tree, usable_cpus, wait_port

PROXIES = ("lbd", "haproxy", "nginx", "direct", "aiohttp-proxy", "lbd-w2")
# Not in the default run: lbd writing an httplog access line per request to a file, the floor
# (the least a uvloop + httptools proxy does) and the relay (a uvloop byte pipe, no HTTP); the
# last two have one upstream, so plain profile only.
EXTRA_PROXIES = ("lbd-log", "floor", "relay")
# Which proxies take part in each profile; `direct` cannot balance over three mock servers.
PROFILE_PROXIES: dict[str, tuple[str, ...]] = {
    "plain": PROXIES + EXTRA_PROXIES,
    "allon": ("lbd", "haproxy", "nginx", "direct"),
    "ehr": ("lbd", "haproxy", "nginx", "aiohttp-proxy"),
}
MOCK_SERVERS = 3
WORKERS_START_S = 5.0
REPO = Path(__file__).resolve().parent.parent
# `python -m lbd` must find this checkout's package even in a venv without `pip install -e .`.
LBD_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
PEER = Path(__file__).resolve().parent / "peers" / "aiohttp_proxy.py"
FLOOR = Path(__file__).resolve().parent / "peers" / "floor_proxy.py"
RELAY = Path(__file__).resolve().parent / "peers" / "relay_proxy.py"


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
    profile: str = "plain"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Lab:
    """Starts the backends and proxies under `workdir`; `supervisor` stops them all."""

    def __init__(self, workdir: Path, placement: Placement, nofile: int) -> None:
        self.workdir = workdir
        self.placement = placement
        self.nofile = nofile
        self.supervisor = Supervisor(workdir)
        self.backend_port = 0
        self.mock_ports: list[int] = []

    def start_backend(self) -> None:
        configs.write_bodies(self.workdir / "www")
        self.backend_port = free_port()
        text = configs.nginx_backend(
            self.workdir, self.backend_port, self.workdir / "www", self.nofile
        )
        self._start("backend", self._nginx_argv("backend", text), self.placement.load_cpu,
                    self.backend_port)  # fmt: skip
        verify(Endpoint("backend", self.backend_port, None))

    def start_mocks(self) -> None:
        """Three mock EHR servers (`lbd mock`) on the load CPU, for the `ehr` profile."""
        for i in range(1, MOCK_SERVERS + 1):
            port = free_port()
            argv = [sys.executable, "-m", "lbd", "mock", "--name", f"app{i}", "--port", str(port)]
            self._start(f"lbd-mock{i}", argv, self.placement.load_cpu, port)
            self.mock_ports.append(port)

    def start_proxy(self, name: str, profile: str = "plain") -> Endpoint:
        """Start proxy `name` for `profile` and check it relays correctly."""
        if name not in PROFILE_PROXIES[profile]:
            raise ValueError(f"proxy {name!r} has no {profile!r} configuration")
        upstreams = self.mock_ports if profile == "ehr" else [self.backend_port]
        if name == "direct":
            endpoint = Endpoint("direct", self.backend_port, None, profile)
        else:
            port = free_port()
            label = f"{name}-{profile}"
            argv = self._proxy_argv(name, label, port, upstreams, profile)
            cpu = None if name == "lbd-w2" else self.placement.proxy_cpu
            endpoint = Endpoint(name, port, self._start(label, argv, cpu, port), profile)
        if name == "lbd-w2":
            _check_workers(endpoint, self.supervisor.log_tail(f"{name}-{profile}"))
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

    def _proxy_argv(
        self, name: str, label: str, port: int, upstreams: list[int], profile: str
    ) -> list[str]:
        allon = profile == "allon"
        access = str(self.workdir / f"{label}-access.log")
        if name == "haproxy":
            conf = self._write(f"{label}.cfg", configs.haproxy(port, upstreams, self.nofile, allon))
            return [tool("haproxy"), "-db", "-f", str(conf)]
        if name == "nginx":
            text = configs.nginx_proxy(
                self.workdir, label, port, upstreams, self.nofile, access if allon else None
            )
            return self._nginx_argv(label, text)
        if name == "aiohttp-proxy":
            ups = [a for p in upstreams for a in ("--upstream", f"127.0.0.1:{p}")]
            return [sys.executable, str(PEER), "--port", str(port), *ups]
        if name in ("floor", "relay"):
            return [
                sys.executable,
                str(FLOOR if name == "floor" else RELAY),
                "--port",
                str(port),
                "--upstream",
                f"127.0.0.1:{upstreams[0]}",
            ]
        if name in ("lbd", "lbd-log", "lbd-w2"):
            text = configs.lbd(
                port,
                upstreams,
                access=access if allon or name == "lbd-log" else "off",
                allon=allon,
                workers=2 if name == "lbd-w2" else 1,
            )
            conf = self._write(f"{label}.yaml", text)
            return [sys.executable, "-m", "lbd", "run", "-c", str(conf)]
        raise ValueError(f"unknown proxy {name!r}; choose from {', '.join(PROXIES)}")

    def _write(self, filename: str, text: str) -> Path:
        path = self.workdir / filename
        path.write_text(text)
        return path

    def _nginx_argv(self, name: str, text: str) -> list[str]:
        (self.workdir / f"{name}-tmp").mkdir(exist_ok=True)
        conf = self._write(f"{name}-nginx.conf", text)
        error_log = self.workdir / f"{name}-error.log"
        return [tool("nginx"), "-p", str(self.workdir), "-c", str(conf), "-e", str(error_log)]


def _check_workers(endpoint: Endpoint, log_tail: str) -> None:
    """`workers: 2` must really run two serving processes, or the row would be a lie."""
    assert endpoint.pid is not None
    deadline = time.monotonic() + WORKERS_START_S  # a master may fork its workers after binding
    while len(process_tree(endpoint.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(process_tree(endpoint.pid)) < 2:
        raise StartError(
            f"{endpoint.name}: global.workers: 2 is not in effect (one process runs)\n{log_tail}"
        )


def tool(name: str) -> str:
    """Absolute path of a required program (Debian puts nginx and haproxy in /usr/sbin)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise StartError(f"{name} not found: run `make tools` (bench/install-tools.sh)")
    return found


def request(
    port: int, path: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, bytes]:
    """(status, body) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def fetch(port: int, path: str) -> tuple[int, int]:
    """(status, body length) of one GET to 127.0.0.1:port."""
    status, body = request(port, path)
    return status, len(body)


def _expect(
    endpoint: Endpoint, method: str, path: str, check: Callable[[bytes], bool], want: str
) -> None:
    """One request; StartError unless it answers 200 with a body that passes `check`."""
    body = b"p" * configs.POST_BYTES if method == "POST" else None
    try:
        status, got = request(endpoint.port, path, method, body)
    except (OSError, http.client.HTTPException) as e:
        raise StartError(f"{endpoint.name}: {method} {path} failed: {e!r}") from None
    if status != 200 or not check(got):
        raise StartError(
            f"{endpoint.name} ({endpoint.profile}): {method} {path} gave {status} with "
            f"{got[:80]!r} ({len(got)} bytes), expected 200 with {want}"
        )


def verify(endpoint: Endpoint) -> None:
    """Raise StartError unless the endpoint relays what its profile's scenarios need."""
    if endpoint.profile == "ehr":
        for module in configs.MODULES:
            _expect(endpoint, "GET", f"/{module}/bench",
                    lambda b: re.search(rb"(by <b>|from )app\d", b) is not None,
                    "a page from a mock app server")  # fmt: skip
        return
    if endpoint.profile == "allon":
        for module in configs.MODULES:
            _expect(endpoint, "GET", f"/{module}/bench", lambda b: len(b) == 200, "200 bytes")
        return
    for path, size in configs.BODIES.items():
        _expect(endpoint, "GET", path, lambda b, n=size: len(b) == n, f"{size} bytes")  # type: ignore[misc]
    # The backend answers the Content-Length it received only after reading the whole body.
    posted = f"{configs.POST_BYTES}\n".encode()
    _expect(endpoint, "POST", "/post-check", lambda b: b == posted, repr(posted))
