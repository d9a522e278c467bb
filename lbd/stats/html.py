"""The /stats page: one self-contained HTML document rendered from a snapshot.

Rules: rendering only (no counters, no I/O); every value from the snapshot goes through `esc()`
and status words reach `class=` only through a fixed table, so no name, reason or state can
inject markup. No external CSS, JS, fonts or images: the page works on an isolated hospital
network and refreshes itself every 5 s. It never shows the lbd version (it is served to anyone
who can reach the stats port; the version only helps an attacker) nor server addresses (a wall
screen gets photographed); /stats.json has both for tools. Malformed-request samples show their
masked excerpt (lbd.inspect.mask) but not the client's address, for the same reason.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

from lbd.inspect.store import EntryJSON
from lbd.stats.snapshot import (
    BackendStats,
    FrontendStats,
    Info,
    Latency,
    ModuleServerStats,
    ModuleStats,
    ServerStats,
    Snapshot,
    Traffic,
)

REFRESH_SECONDS = 5

# Status word → CSS class; anything unexpected gets the neutral class, never its own text.
STATUS_CLASS = {"UP": "st-up", "DOWN": "st-down", "DRAIN": "st-drain", "MAINT": "st-maint"}

# Large type that grows with the screen: ~16 px on a laptop, ~19 px on a 1080p wall screen,
# ~33 px on 4K. Status is shown as a word and a colour (colour alone fails colour-blind readers).
CSS = """
:root{--bg:#f6f7f9;--fg:#1b1f24;--muted:#5b6572;--card:#fff;--line:#d8dde3;--head:#eef1f4;
--up:#1a7f37;--down:#c62828;--drain:#e07b00;--maint:#3d5a80}
@media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e8ebef;--muted:#9aa5b1;
--card:#1a1f25;--line:#2e363f;--head:#222931}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:clamp(14px,6px + .7vw,34px)/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{padding:.8em 1.2em;border-bottom:1px solid var(--line);display:flex;flex-wrap:wrap;
gap:.3em 2em;align-items:baseline}
h1{font-size:1.5em;margin:0}h2{font-size:1.25em;margin:0 0 .4em}
h3{font-size:1em;margin:1em 0 .3em;color:var(--muted)}
.meta,.summary{color:var(--muted);margin:0}
main{padding:1em 1.2em;display:grid;gap:1.2em}
section{min-width:0;background:var(--card);border:1px solid var(--line);border-radius:.4em;
padding:.8em 1em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
table.narrow{width:auto;min-width:18em}
th,td{padding:.3em .5em;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);font-weight:600}
th:first-child,td:first-child,td.txt{text-align:left}
tfoot td{font-weight:600;border-top:2px solid var(--line)}
tr.st-up td:first-child{border-left:.35em solid var(--up)}
tr.st-down td:first-child{border-left:.35em solid var(--down)}
tr.st-drain td:first-child{border-left:.35em solid var(--drain)}
tr.st-maint td:first-child{border-left:.35em solid var(--maint)}
.badge{display:inline-block;min-width:4.5em;text-align:center;padding:.05em .4em;
border-radius:.3em;color:#fff;font-weight:700;background:var(--muted)}
.badge.st-up{background:var(--up)}.badge.st-down{background:var(--down)}
.badge.st-drain{background:var(--drain)}.badge.st-maint{background:var(--maint)}
.servers td:nth-child(2),.servers td:nth-child(3){text-align:center}
.tag{font-size:.75em;color:var(--muted);margin-left:.4em}
.bad{color:var(--down);font-weight:700}
.none{color:var(--muted);margin:0}
td.excerpt{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;white-space:pre-wrap;
word-break:break-all;max-width:40em}
footer{padding:0 1.2em 1em;color:var(--muted);font-size:.8em}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render(snap: Snapshot) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<title>Load balancer statistics</title>",
        f"<style>{CSS}</style></head><body>",
        _header(snap["info"]),
        "<main>",
        *(_frontend(fe) for fe in snap["frontends"]),
        *(_backend(be) for be in snap["backends"]),
        "</main>",
        "<footer>Latency columns show the upper bound of the histogram bucket holding the"
        " percentile. Error rate: share of answered requests that got a 5xx.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --- formatting -----------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


def uptime(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h {minutes:02d}m" if days else f"{hours}h {minutes:02d}m"


def _quantiles(lat: Latency) -> list[str]:
    if not lat["count"]:
        return ["–", "–", "–"]
    return [duration(lat["p50"]), duration(lat["p95"]), duration(lat["p99"])]


def _status_badge(status: str) -> str:
    cls = STATUS_CLASS.get(status, "st-unknown")
    return f'<span class="badge {cls}">{esc(status)}</span>'


# --- tables ---------------------------------------------------------------------------------------


def _cells(cells: Iterable[object]) -> str:
    return "".join(f"<td>{esc(c)}</td>" for c in cells)


def _row(cells: Iterable[object]) -> str:
    return f"<tr>{_cells(cells)}</tr>"


def _table(heads: Sequence[str], body: Iterable[str], foot: str = "", cls: str = "") -> str:
    thead = "".join(f"<th>{esc(h)}</th>" for h in heads)
    tfoot = f"<tfoot>{foot}</tfoot>" if foot else ""
    attr = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{thead}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody>{tfoot}</table></div>"
    )


def _answers(t: Traffic) -> list[object]:
    r = t["responses"]
    return [f"{t['req_rate']:.1f}", t["requests"], r["2xx"], r["4xx"], r["5xx"]]


# --- sections -------------------------------------------------------------------------------------


def _header(info: Info) -> str:
    return (
        "<header><h1>Load balancer statistics</h1>"
        f'<p class="meta">up {esc(uptime(info["uptime_seconds"]))}'
        f" · configuration generation {esc(info['generation'])}"
        f" · refreshed every {REFRESH_SECONDS} s</p></header>"
    )


MODULE_HEADS = ("Module", "Req/s", "Requests", "2xx", "4xx", "5xx", "Error rate", "p50", "p95",
                "p99", "Served by")  # fmt: skip


def served_by(servers: Sequence[ModuleServerStats]) -> str:
    """`app1 52% · app2 48%`: the servers that answered the module, busiest first (plain text,
    escaped by the caller). Names get their backend when the module reaches several backends."""
    answered = [s for s in servers if s["requests"]]  # a pair may exist before its first answer
    if not answered:
        return "–"
    qualify = len({s["backend"] for s in answered}) > 1
    parts = []
    for s in sorted(answered, key=lambda s: -s["requests"]):  # stable: config order on ties
        name = f"{s['backend']}/{s['server']}" if qualify else s["server"]
        pct = round(s["share"] * 100)
        parts.append(f"{name} {pct or '<1'}%")
    return " · ".join(parts)


def _module_row(m: ModuleStats) -> str:
    rate = f"{m['error_rate'] * 100:.1f} %"
    cells = _cells([m["name"], *_answers(m), rate, *_quantiles(m["latency"])])
    return f'<tr>{cells}<td class="txt">{esc(served_by(m["servers"]))}</td></tr>'


def _frontend(fe: FrontendStats) -> str:
    summary = (
        f'<p class="summary">{esc(fe["conn_cur"])} connections open · '
        f"{esc(fe['conn_total'])} accepted · {esc(fe['denied'])} denied by rules · "
        f"{esc(fe['malformed_total'])} malformed</p>"
    )
    return (
        f"<section><h2>Frontend {esc(fe['name'])}</h2>{summary}"
        "<h3>Application modules</h3>"
        + _table(MODULE_HEADS, (_module_row(m) for m in fe["modules"]))
        + "<h3>Malformed requests</h3>"
        + _malformed(fe["malformed"])
        + _captures(fe["captures"])
        + "</section>"
    )


def _malformed(by_reason: dict[str, int]) -> str:
    if not by_reason:
        return '<p class="none">None refused.</p>'
    rows = (_row([r, n]) for r, n in by_reason.items())
    return _table(("Reason", "Count"), rows, cls="narrow")


CAPTURE_HEADS = ("Reason", "Module", "Count", "Action", "First seen", "Last seen", "Offset",
                 "Last request (masked)")  # fmt: skip
CAPTURE_ROWS = 20  # most recently seen (reason, module) pairs shown; /stats.json has them all


def clock(unix: float) -> str:
    """Local time of day, with the date when it is not today."""
    tm = time.localtime(unix)
    if time.strftime("%Y-%m-%d", tm) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", tm)
    return time.strftime("%Y-%m-%d %H:%M:%S", tm)


def _capture_row(e: EntryJSON) -> str:
    actions = ", ".join(f"{n} {a}" for a, n in e["actions"].items() if n)
    last = e["samples"][0] if e["samples"] else None
    offset = "" if last is None or last["offset"] < 0 else f"{last['where']} +{last['offset']}"
    request = "" if last is None else f"{last['excerpt']}"
    return (
        f'<tr><td>{esc(e["reason"])}</td><td class="txt">{esc(e["module"])}</td>'
        f'<td>{esc(e["count"])}</td><td class="txt">{esc(actions)}</td>'
        + _cells([clock(e["first_seen"]), clock(e["last_seen"]), offset])
        + f'<td class="txt excerpt">{esc(request)}</td></tr>'
    )


def _captures(entries: list[EntryJSON]) -> str:
    """The capture store, without client addresses (the page may be on a wall screen)."""
    if not entries:
        return ""
    rows = (_capture_row(e) for e in entries[:CAPTURE_ROWS])
    return "<h3>Recent malformed requests</h3>" + _table(CAPTURE_HEADS, rows)


SERVER_HEADS = ("Server", "Status", "Admin", "Weight", "Cur", "Max", "Req/s", "Requests", "2xx",
                "4xx", "5xx", "Errors", "Retries", "Idle conns", "p50", "p95", "p99")  # fmt: skip


def _server_row(s: ServerStats) -> str:
    name = esc(s["name"]) + ('<span class="tag">backup</span>' if s["backup"] else "")
    errors = s["conn_errors"] + s["response_errors"]
    rest = _cells([
        s["admin"], s["weight"], s["inflight"], s["max_requests"], *_answers(s), errors,
        s["retries"], s["idle_connections"], *_quantiles(s["latency"]),
    ])  # fmt: skip
    # The row class comes from the fixed STATUS_CLASS table, never from the snapshot.
    cls = STATUS_CLASS.get(s["status"], "st-unknown")
    badge = _status_badge(s["status"])
    return f'<tr class="{cls}"><td>{name}</td><td>{badge}</td>{rest}</tr>'


def _persistence(be: BackendStats) -> str:
    """One line of session-persistence outcomes (and the stick table), for sticky backends."""
    outcomes = be["persistence"]
    if outcomes is None:
        return ""
    text = "persistence: " + " · ".join(f"{n} {name}" for name, n in outcomes.items())
    table = be["stick_table"]
    if table is not None:
        text += (
            f" · stick table on {table['on']}: {table['entries']}/{table['size']} entries, "
            f"{table['evicted']} evicted, {table['expired']} expired"
        )
    return f'<p class="summary">{esc(text)}</p>'


def _backend(be: BackendStats) -> str:
    errors = be["conn_errors"] + be["response_errors"]
    foot = _row([
        "Backend", be["status"], "", be["weight"], be["cur_requests"], be["max_requests"],
        *_answers(be), errors, be["retries"], "", *_quantiles(be["latency"]),
    ])  # fmt: skip
    servers = f"{be['active_servers']} active and {be['backup_servers']} backup servers usable"
    return (
        f"<section><h2>Backend {esc(be['name'])} {_status_badge(be['status'])}</h2>"
        f'<p class="summary">{esc(servers)} · balance {esc(be["balance"])} · '
        f"{esc(be['no_server'])} requests found no server</p>"
        + _persistence(be)
        + _table(SERVER_HEADS, (_server_row(s) for s in be["servers"]), foot, cls="servers")
        + "</section>"
    )
