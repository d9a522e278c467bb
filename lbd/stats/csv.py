"""HAProxy-style CSV (`show stat` / `;csv`), rendered from a snapshot.

Rules: one FRONTEND row per frontend; per backend one row per server then a BACKEND row, as
HAProxy lists proxies. Columns are a stable prefix of HAProxy's, in HAProxy's order, so scripts
written for HAProxy's CSV read this one by column name.

Differences from HAProxy, by column:
- empty: smax on FRONTEND rows (no connection peak is kept); qcur, qmax, chkfail, chkdown,
  downtime, qtime, ctime, rtime on FRONTEND rows (as in HAProxy); chkfail, chkdown, downtime on
  BACKEND rows (no backend transitions are counted);
- qcur/qmax are the backend's queue on BACKEND rows and 0 on server rows: lbd queues per backend
  (a request waits for any server's slot), never per server; qtime is empty on server rows;
- chkfail/chkdown/downtime (seconds) are empty on servers without a health check, as in HAProxy;
- scur/smax/stot count requests on BACKEND and server rows (lbd is request-oriented) and
  connections on FRONTEND rows (as HAProxy's sessions);
- ereq is the frontend's malformed requests (all reasons); econ/eresp/wretr/wredis are empty on
  FRONTEND rows;
- rate is requests per second (rounded) between the last two readings, not sessions;
- qtime, ctime, rtime and ttime are averages since start in milliseconds, not over the last
  1024 requests, and empty until something was measured: qtime averages the requests that did
  wait (HAProxy counts the others as 0), ctime new connections only (not pooled ones), rtime is
  the time to the response head (HAProxy's Tr);
- bin counts request body bytes only.
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


def _checks(s: ServerStats) -> Row:
    """Health-check columns, for servers that have a check."""
    if not s["checked"]:
        return {}
    return {
        "chkfail": s["check_failures"],
        "chkdown": s["check_downs"],
        "downtime": round(s["downtime"]),
    }


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
        "qcur": 0,
        "qmax": 0,
        "ctime": _ms(s["connect_time"]),
        "rtime": _ms(s["header_time"]),
        **_checks(s),
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
        "qcur": be["queue_cur"],
        "qmax": be["queue_max"],
        "qtime": _ms(be["queue_time"]),
        "ctime": _ms(be["connect_time"]),
        "rtime": _ms(be["header_time"]),
    }
