"""HAProxy-style CSV (`show stat` / `;csv`), rendered from a snapshot.

Rules: one FRONTEND row per frontend; per backend one row per server then a BACKEND row, as
HAProxy lists proxies. Columns are a stable prefix of HAProxy's, in HAProxy's order, so scripts
written for HAProxy's CSV read this one by column name.

Differences from HAProxy, by column:
- empty, not tracked yet: qcur, qmax (no queue), smax on FRONTEND rows (no connection peak),
  chkfail, chkdown, downtime (no health-check counters), qtime, rtime (queue time and
  time-to-first-byte are not measured apart from the total);
- scur/smax/stot count requests on BACKEND and server rows (lbd is request-oriented) and
  connections on FRONTEND rows (as HAProxy's sessions);
- ereq is the frontend's malformed requests (all reasons); econ/eresp/wretr/wredis are empty on
  FRONTEND rows;
- rate is requests per second (rounded) between the last two readings, not sessions;
- ctime (servers only) and ttime are averages since start in milliseconds, not over the last
  1024 requests; bin counts request body bytes only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from lbd.stats.snapshot import (
    CODE_ORDER,
    BackendStats,
    FrontendStats,
    Latency,
    ServerStats,
    Snapshot,
    Traffic,
)

# fmt: off
COLUMNS = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "stot", "bin", "bout", "ereq", "econ",
    "eresp", "wretr", "wredis", "status", "weight", "chkfail", "chkdown", "downtime", "rate",
    "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
    "qtime", "ctime", "rtime", "ttime",
)
# fmt: on

Cell = str | int
Row = dict[str, Cell]


def render(snap: Snapshot) -> str:
    out = io.StringIO()
    out.write("# " + ",".join(COLUMNS) + "\n")
    # Names are restricted by the config loader, but quoting stays correct whatever they hold.
    writer = csv.DictWriter(out, COLUMNS, restval="", lineterminator="\n")
    writer.writerows(rows(snap))
    return out.getvalue()


def rows(snap: Snapshot) -> Iterator[Row]:
    for fe in snap["frontends"]:
        yield _frontend(fe)
    for be in snap["backends"]:
        for server in be["servers"]:
            yield _server(be["name"], server)
        yield _backend(be)


def _ms(lat: Latency) -> Cell:
    return round(lat["mean"] * 1000) if lat["count"] else ""


def _common(traffic: Traffic) -> Row:
    """Columns every row fills the same way."""
    row: Row = {
        "bin": traffic["bytes_in"],
        "bout": traffic["bytes_out"],
        "rate": round(traffic["req_rate"]),
        "ttime": _ms(traffic["latency"]),
    }
    for code in CODE_ORDER:
        row[f"hrsp_{code}"] = traffic["responses"][code]
    return row


def _frontend(fe: FrontendStats) -> Row:
    return {
        **_common(fe),
        "pxname": fe["name"],
        "svname": "FRONTEND",
        "scur": fe["conn_cur"],
        "stot": fe["conn_total"],
        "ereq": fe["malformed_total"],
        "status": "OPEN",
    }


def _server(backend: str, s: ServerStats) -> Row:
    return {
        **_common(s),
        "pxname": backend,
        "svname": s["name"],
        "scur": s["inflight"],
        "smax": s["max_requests"],
        "stot": s["requests"],
        "econ": s["conn_errors"],
        "eresp": s["response_errors"],
        "wretr": s["retries"],
        "wredis": s["redispatches"],
        "status": s["status"],
        "weight": s["weight"],
        "ctime": _ms(s["connect_time"]),
    }


def _backend(be: BackendStats) -> Row:
    return {
        **_common(be),
        "pxname": be["name"],
        "svname": "BACKEND",
        "scur": be["cur_requests"],
        "smax": be["max_requests"],
        "stot": be["requests"],
        "econ": be["conn_errors"],
        "eresp": be["response_errors"],
        "wretr": be["retries"],
        "wredis": be["redispatches"],
        "status": be["status"],
        "weight": be["weight"],
    }
