"""The /stats page of a real lbd, rendered by a real headless Chromium.

Traffic goes through lbd to a real mock backend (two servers, one of them in maintenance), then
Chromium (Debian package `chromium`; bench/install-tools.sh installs it) loads /stats. The DOM it
dumps must hold the server table with the numbers the traffic produced and the module table; a
screenshot is kept in tests/artifacts/stats.png (gitignored) for a human look.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from e2e_helpers import HOST, REPO, Harness, LbdProcess, free_port, lbd_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
BROWSER_TIMEOUT = 45.0  # a cold Chromium start on a loaded CI machine

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="needs a headless browser (Debian package chromium; bench/install-tools.sh)",
    ),
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One headless Chromium run with a throw-away profile and no network chatter."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=BROWSER_TIMEOUT,
    )


class Tables(HTMLParser):
    """Every <table> of the rendered DOM as rows of cell texts, with its class and the <h2>
    of the section it belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, str, list[list[str]]]] = []  # (h2, class, rows)
        self._h2 = ""
        self._in_h2 = False
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2, self._h2 = True, ""
        elif tag == "table":
            self.tables.append((self._h2.strip(), dict(attrs).get("class") or "", []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            self.tables[-1][2].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self._h2 += data
        if self._cell is not None:
            self._cell.append(data)


def rows_by_name(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """Body rows keyed by their first cell, each a {column heading: text} dict."""
    heads = rows[0]
    return {r[0]: dict(zip(heads, r, strict=True)) for r in rows[1:]}


async def test_stats_page_renders_live_numbers_in_chromium(
    harness: Harness, tmp_path: Path
) -> None:
    ehr1 = await harness.mock_backend("ehr1")
    ehr2 = await harness.mock_backend("ehr2")
    port, stats_port = free_port(), free_port()
    config = lbd_config(port, [ehr1.port, ehr2.port])
    config["global"]["stats"] = {"bind": f"{HOST}:{stats_port}"}
    config["frontends"]["fe"]["modules"] = [
        {"name": "dmu", "path_prefix": "/dmu"},
        {"name": "rendez-vous", "path_prefix": "/rendez-vous"},
    ]
    config["backends"]["app"]["servers"][1]["state"] = "maint"  # s2 gets nothing
    lbd = LbdProcess(config, harness.workdir, port)
    harness.procs.append((lbd, False))
    await lbd.start()

    session = harness.session()
    paths = ["/dmu/liste"] * 6 + ["/rendez-vous/jour"] * 3 + ["/nothing/here"] * 2
    for path in paths:
        async with session.get(f"http://{HOST}:{port}{path}") as resp:
            assert resp.status == (404 if path.startswith("/nothing") else 200)

    url = f"http://{HOST}:{stats_port}/stats"
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    parser = Tables()
    parser.feed(dom.stdout.decode())

    servers = [t for t in parser.tables if t[1] == "servers"]
    assert len(servers) == 1 and servers[0][0].startswith("Backend app"), parser.tables
    by_server = rows_by_name(servers[0][2])
    s1, s2 = by_server["s1"], by_server["s2"]
    assert (s1["Status"], s1["Admin"], s1["Requests"]) == ("UP", "ready", str(len(paths)))
    assert (s1["2xx"], s1["4xx"], s1["5xx"]) == ("9", "2", "0")
    assert s1["p50"].endswith("ms")  # the latency columns have data
    assert (s2["Status"], s2["Admin"], s2["Requests"]) == ("MAINT", "maint", "0")
    assert by_server["Backend"]["Requests"] == str(len(paths))  # the footer sums them

    modules = [t for t in parser.tables if t[2] and t[2][0][:2] == ["Module", "Req/s"]]
    assert len(modules) == 1 and modules[0][0] == "Frontend fe"
    by_module = rows_by_name(modules[0][2])
    assert by_module["dmu"]["Requests"] == "6" and by_module["dmu"]["2xx"] == "6"
    assert by_module["rendez-vous"]["Requests"] == "3"
    assert by_module["other"]["Requests"] == "2" and by_module["other"]["4xx"] == "2"
    assert by_module["other"]["Error rate"] == "0.0 %"  # 4xx are not errors; 5xx are

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "stats.png"
    png.unlink(missing_ok=True)
    shot = chromium(
        tmp_path / "profile-shot",
        "--hide-scrollbars",
        f"--screenshot={png}",
        "--window-size=1400,1000",
        url,
    )
    assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 1000)
