"""Statistics across worker processes: each worker dumps its counters, the master merges them.

Rules:
- Generic over the counter classes of lbd/stats/counters.py: every slot attribute (whole MRO,
  compiled or not) or `__dict__` is dumped and merged by its type, so a counter added to those
  classes aggregates with no change here. ints and floats are summed, lists of numbers summed
  element-wise, dicts of numbers summed per key, Histograms bucket-wise. Attributes that hold a
  high-water mark take the maximum instead: they are listed in MAX_FIELDS (the only list to
  keep up to date). Gauges (current connections, requests in flight, queue length) are summed:
  the total across workers is what the operator wants to see.
- The master never serves traffic, so its own runtime's counter objects are free to hold the
  totals: `merge_into` zeroes them in place and adds every dump, synchronously, so a renderer
  that runs right after (no await in between) sees one consistent total. Exporters keep their
  references to these objects, as with `clear counters`.
- The malformed-request captures are merged per (reason, module): counts summed, first/last
  seen widened, and the newest samples of all workers kept (newest first, as one process).
- Dumps are plain JSON data (they cross the control channel).
- Totals never go down while lbd runs (Prometheus reads a drop as a counter reset): the master
  keeps each worker's last dump, used when that worker misses a reading, and folds the last
  dump of a worker that exits into one `retired` dump merged with every reading (`retire`).
  Gauges (GAUGE_FIELDS, a server's in-flight requests) describe what runs now: a dead worker's
  are left out; so are its captures (samples, not counters). `clear counters` drops it all.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from typing import Any

from lbd.inspect.store import CaptureStore, EntryJSON, Sample
from lbd.runtime import Runtime
from lbd.stats.counters import Histogram, TrafficCounters

# High-water marks: the merged value is the largest of the workers' (a sum would be a peak that
# never happened).
MAX_FIELDS = frozenset({"max_requests", "queue_max"})

# Gauges: what runs right now. Summed over live workers, never carried over from a dead one.
GAUGE_FIELDS = frozenset({"conn_cur", "cur_requests", "queue_cur"})

Dump = dict[str, Any]


def _fields(obj: object) -> Iterator[str]:
    # Slots show as member descriptors in each class's __dict__, and so do the attributes of a
    # class compiled by mypyc (which keeps no `__slots__`): read the descriptors, not the names.
    seen: set[str] = set()
    for cls in type(obj).__mro__:
        for name, attr in cls.__dict__.items():
            if isinstance(attr, _SLOT_TYPES) and name not in seen and not name.startswith("__"):
                seen.add(name)
                yield name
    for name in getattr(obj, "__dict__", {}):
        if name not in seen and not name.startswith("_"):
            yield name


_SLOT_TYPES = (types.MemberDescriptorType, types.GetSetDescriptorType)


# --- one counter object ---------------------------------------------------------------------------


def dump_counters(obj: object) -> Dump:
    """Every counter attribute of `obj` as JSON data (unknown types are skipped)."""
    out: Dump = {}
    for name in _fields(obj):
        value = getattr(obj, name, None)
        if isinstance(value, Histogram):
            out[name] = {"counts": value.counts, "sum": value.sum, "count": value.count}
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float | list | dict):
            out[name] = value
    return out


def zero_counters(obj: object, keep_gauges: bool = False) -> None:
    """Every counter attribute of `obj` back to zero, in place (objects keep their identity).
    `keep_gauges`: what runs now (GAUGE_FIELDS) stays, or the requests in flight would count
    themselves out below zero (`clear counters` in a running process)."""
    for name in _fields(obj):
        if keep_gauges and name in GAUGE_FIELDS:
            continue
        value = getattr(obj, name, None)
        if isinstance(value, Histogram):
            value.counts[:] = [0] * len(value.counts)
            value.sum = 0.0
            value.count = 0
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            setattr(obj, name, type(value)())
        elif isinstance(value, list):
            value[:] = [0] * len(value)
        elif isinstance(value, dict):
            value.clear()


def add_counters(obj: object, dump: Dump) -> None:
    """Add one worker's dump into `obj` (max for MAX_FIELDS)."""
    for name, theirs in dump.items():
        mine = getattr(obj, name, None)
        if mine is None:
            continue  # a field this process does not have (a newer or older worker): skip
        if isinstance(mine, Histogram):
            _add_list(mine.counts, theirs["counts"])
            mine.sum += theirs["sum"]
            mine.count += theirs["count"]
        elif isinstance(mine, int | float) and isinstance(theirs, int | float):
            merged = max(mine, theirs) if name in MAX_FIELDS else mine + theirs
            setattr(obj, name, merged)
        elif isinstance(mine, list):
            _add_list(mine, theirs)
        elif isinstance(mine, dict):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n


def _add_list(mine: list[Any], theirs: list[Any]) -> None:
    for i, n in enumerate(theirs[: len(mine)]):
        mine[i] += n


# --- a whole runtime ------------------------------------------------------------------------------


def dump_runtime(rt: Runtime) -> Dump:
    """One worker's counters, captures and in-flight requests, keyed by name."""
    return {
        "frontends": {
            name: {
                "counters": dump_counters(fe.counters),
                "modules": {m: dump_counters(c) for m, c in fe.module_counters.items()},
                "module_servers": [
                    [*key, dump_counters(c)] for key, c in fe.module_servers.items()
                ],
                "captures": fe.captures.to_json(),
                "overflow": fe.captures.overflow,
            }
            for name, fe in rt.frontends.items()
        },
        "backends": {name: dump_counters(be.counters) for name, be in rt.backends.items()},
        "servers": [
            [b, s, dump_counters(state.counters), state.inflight]
            for (b, s), state in rt.servers.items()
        ],
    }


def merge_into(rt: Runtime, dumps: Iterable[Dump]) -> None:
    """Make `rt`'s counters the totals of `dumps` (see the module rules). Names that `rt` does
    not know (a worker between two reloads) are skipped."""
    dumps = list(dumps)
    for fe in rt.frontends.values():
        zero_counters(fe.counters)
        for mc in fe.module_counters.values():
            zero_counters(mc)
        for pair in fe.module_servers.values():
            zero_counters(pair)
        fe.captures.clear()
    for be in rt.backends.values():
        zero_counters(be.counters)
    for state in rt.servers.values():
        zero_counters(state.counters)
        state.inflight = 0
    captures: dict[str, list[list[EntryJSON]]] = {}
    for dump in dumps:
        _add_dump(rt, dump, captures)
    for name, lists in captures.items():
        merge_captures(rt.frontends[name].captures, lists)


def _add_dump(rt: Runtime, dump: Dump, captures: dict[str, list[list[EntryJSON]]]) -> None:
    for name, fd in dump["frontends"].items():
        frontend = rt.frontends.get(name)
        if frontend is None:
            continue
        add_counters(frontend.counters, fd["counters"])
        for module, md in fd["modules"].items():
            mc = frontend.module_counters.get(module)
            if mc is not None:
                add_counters(mc, md)
        for module, backend, server, pd in fd["module_servers"]:
            key = (module, backend, server)
            pair = frontend.module_servers.get(key)
            if pair is None:
                pair = frontend.module_servers[key] = TrafficCounters()
            add_counters(pair, pd)
        captures.setdefault(name, []).append(fd["captures"])
        frontend.captures.overflow += fd["overflow"]
    for name, bd in dump["backends"].items():
        be_rt = rt.backends.get(name)
        if be_rt is not None:
            add_counters(be_rt.counters, bd)
    for backend, server, sd, inflight in dump["servers"]:
        state = rt.servers.get((backend, server))
        if state is not None:
            add_counters(state.counters, sd)
            state.inflight += inflight


# --- workers that are gone ------------------------------------------------------------------------


def retire(retired: Dump | None, dump: Dump) -> Dump:
    """`retired` (None: nothing yet) plus the counters of a worker that exited, added in place
    (`dump` itself is not changed). Gauges, in-flight requests and captures are left out."""
    out: Dump = retired if retired is not None else {"frontends": {}, "backends": {}, "servers": []}
    for name, fd in dump["frontends"].items():
        mine = out["frontends"].setdefault(
            name,
            {"counters": {}, "modules": {}, "module_servers": [], "captures": [], "overflow": 0},
        )
        _fold(mine["counters"], fd["counters"])
        for module, md in fd["modules"].items():
            _fold(mine["modules"].setdefault(module, {}), md)
        pairs = {tuple(row[:3]): row[3] for row in mine["module_servers"]}
        for module, backend, server, pd in fd["module_servers"]:
            key = (module, backend, server)
            if key not in pairs:
                pairs[key] = {}
                mine["module_servers"].append([module, backend, server, pairs[key]])
            _fold(pairs[key], pd)
    for name, bd in dump["backends"].items():
        _fold(out["backends"].setdefault(name, {}), bd)
    rows = {(row[0], row[1]): row[2] for row in out["servers"]}
    for backend, server, sd, _inflight in dump["servers"]:
        if (backend, server) not in rows:
            rows[(backend, server)] = {}
            out["servers"].append([backend, server, rows[(backend, server)], 0])
        _fold(rows[(backend, server)], sd)
    return out


def _fold(mine: Dump, theirs: Dump) -> None:
    """One counter object's dump added into another, by value type as `add_counters` does."""
    for name, value in theirs.items():
        if name in GAUGE_FIELDS:
            continue
        have = mine.get(name)
        if isinstance(value, dict) and isinstance(value.get("counts"), list):  # a Histogram
            if have is None:
                have = mine[name] = {"counts": [0] * len(value["counts"]), "sum": 0.0, "count": 0}
            _add_list(have["counts"], value["counts"])
            have["sum"] += value["sum"]
            have["count"] += value["count"]
        elif isinstance(value, int | float):
            if have is None:
                mine[name] = value
            else:
                mine[name] = max(have, value) if name in MAX_FIELDS else have + value
        elif isinstance(value, list):
            if have is None:
                have = mine[name] = [0] * len(value)
            _add_list(have, value)
        elif isinstance(value, dict):
            if have is None:
                have = mine[name] = {}
            for key, n in value.items():
                have[key] = have.get(key, 0) + n


def merge_captures(store: CaptureStore, per_worker: list[list[EntryJSON]]) -> None:
    """Add the capture entries of several workers to `store` (see the module rules)."""
    grouped: dict[tuple[str, str], list[EntryJSON]] = {}
    for entries in per_worker:
        for entry in entries:
            grouped.setdefault((entry["reason"], entry["module"]), []).append(entry)
    for (reason, module), entries in grouped.items():
        samples = sorted((s for e in entries for s in e["samples"]), key=lambda s: s["time"])
        for s in samples:  # oldest first: the store keeps the newest
            sample = Sample(
                time=s["time"],
                client=s["client"],
                method=s["method"],
                action=s["action"],
                status=s["status"],
                reasons=tuple(s["reasons"]),
                offset=s["offset"],
                where=s["where"],
                excerpt=s["excerpt"],
            )
            store.record(reason, module, sample)
        merged = store.get(reason, module)
        if merged is None:
            continue  # the store is full: already counted in its overflow
        merged.count = sum(e["count"] for e in entries)
        merged.actions = {}
        for e in entries:
            for action, n in e["actions"].items():
                merged.actions[action] = merged.actions.get(action, 0) + n
        merged.first_seen = min(e["first_seen"] for e in entries)
        merged.last_seen = max(e["last_seen"] for e in entries)
