#!/usr/bin/env python3
"""lbd against HAProxy and nginx, one command: `.venv/bin/python bench/run.py [--quick]`.

Starts an nginx backend and every proxy on 127.0.0.1 under a temporary directory, checks each
relays the bodies intact, runs wrk with repetitions interleaved, prints a table per scenario and
writes JSON (bench/results/latest*.json, and --json PATH). Every process it starts is stopped on
exit, Ctrl-C or SIGTERM. See bench/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import chart
import report
import rss
import syscalls
import throughput
import wrk
from lab import EXTRA_PROXIES, PROFILE_PROXIES, PROXIES, REPO, Endpoint, Lab, Placement, tool
from procs import (
    RESULTS,
    StartError,
    busy_percent,
    exit_code,
    unwind_on_signals,
    usable_cpus,
    write_results,
)

# Proxies another engineer may still be finishing: skipped ones get a second chance at the end.
RETRY_LATE = ("lbd-w2",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repetition x 3 s (smoke run)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (3)")
    p.add_argument("--proxies", default=",".join(PROXIES), help="comma list (%(default)s)")
    keys = ",".join(s.key for s in throughput.SCENARIOS)
    p.add_argument("--scenarios", default=keys, help="comma list (%(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here")
    p.add_argument("--syscalls", action="store_true", help="syscalls per request (strace)")
    p.add_argument("--rss", action="store_true", help="RSS per idle keep-alive connection")
    p.add_argument("--rss-connections", type=int, default=5000, metavar="N")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    redo = "measure nothing: redo the table, latest.md and latest.png from a run's JSON"
    p.add_argument("--from-json", type=Path, metavar="PATH", help=redo)
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.duration = 1, 3.0
    args.proxies = _choose(p, args.proxies, PROXIES + EXTRA_PROXIES, "proxy")
    args.scenarios = [
        s for s in throughput.SCENARIOS
        if s.key in _choose(p, args.scenarios, [s.key for s in throughput.SCENARIOS], "scenario")
    ]  # fmt: skip
    return args


def _choose(p: argparse.ArgumentParser, raw: str, allowed: Any, what: str) -> list[str]:
    chosen = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        p.error(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    return chosen


# --- environment ----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str | None:
    """First output line of a version command (nginx and wrk print theirs on stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired, StartError):
        return None
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _tool_version(name: str, flag: str) -> str | None:
    try:
        return _first_line([tool(name), flag])
    except StartError:
        return None


def _check_idle(cpus: list[int]) -> float:
    """Busy % of the benchmark's CPUs before anything starts; warn when something else runs."""
    busy = busy_percent(cpus)
    if busy > 10:
        print(f"warning: CPUs {cpus} are already {busy:.0f}% busy: other load will skew results",
              file=sys.stderr)  # fmt: skip
    return busy


def environment(args: argparse.Namespace, placement: Placement) -> dict[str, Any]:
    cpus = [c for c in (placement.proxy_cpu, placement.load_cpu) if c is not None]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "nproc": len(usable_cpus()),
        "pinning": {"proxy_cpu": placement.proxy_cpu, "load_cpu": placement.load_cpu},
        "busy_before_pct": _check_idle(cpus or usable_cpus()),
        "versions": {
            "haproxy": _tool_version("haproxy", "-v"),
            "nginx": _tool_version("nginx", "-v"),
            "wrk": _tool_version("wrk", "-v"),
            "python": platform.python_version(),
            "uvloop": _package_version("uvloop"),
            "httptools": _package_version("httptools"),
            "lbd": _package_version("lbd"),
            "lbd_commit": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        },
        "reps": args.reps,
        "duration_s": args.duration,
        "proxies": args.proxies,
    }


# --- phases ---------------------------------------------------------------------------------


def start_endpoints(
    lab: Lab, names: list[str], profiles: list[str]
) -> tuple[list[Endpoint], dict[str, str]]:
    """Start every proxy that can start, once per profile; the others are reported, not fatal."""
    endpoints, skipped = [], {}
    for profile in profiles:
        for name in names:
            if name not in PROFILE_PROXIES[profile]:
                continue
            try:
                endpoints.append(lab.start_proxy(name, profile))
            except StartError as e:
                skipped[f"{name}/{profile}"] = str(e)
                print(f"!! skipping {name} ({profile}): {e}", file=sys.stderr)
    return endpoints, skipped


def _progress(run: throughput.Run) -> None:
    cpu = f"{run.cpu_us_per_req:7.1f} µs/req" if run.cpu_us_per_req is not None else "     — µs/req"
    errors = run.socket_errors + run.status_errors
    print(
        f"  rep {run.rep}  {run.scenario:<10} {run.proxy:<13} {run.rps:>10,.0f} req/s  "
        f"p99 {run.p99_ms:7.2f} ms  cpu {cpu}  errors {errors}",
        flush=True,
    )


def run_throughput(
    args: argparse.Namespace, endpoints: list[Endpoint], lab: Lab, doc: dict[str, Any]
) -> dict[str, Any]:
    scripts = throughput.scripts(lab.workdir, args.scenarios)
    throughput.warm_up(endpoints, scripts, lab.placement)
    runs = throughput.run_all(
        endpoints, args.scenarios, args.reps, args.duration, scripts, lab.placement, _progress
    )
    runs += _retry_late(args, endpoints, lab, doc["skipped"], scripts)
    return {"runs": [asdict(r) for r in runs], **render_all(args, runs, doc["meta"])}


def render_all(
    args: argparse.Namespace, runs: list[throughput.Run], meta: dict[str, Any]
) -> dict[str, Any]:
    """The table on stdout, latest.md and latest.png; the summary part of the JSON."""
    summaries = report.summarise(runs)
    scaling = report.scaling(summaries, meta["nproc"], meta["pinning"]["proxy_cpu"] is not None)
    print()
    print(report.render(summaries, args.scenarios, meta["reps"], meta["duration_s"]))
    for row in scaling:
        print(f"workers 2 ÷ workers 1 ({row['scenario']}): {row['ratio']}x")
    if scaling:
        print(f"  ({scaling[0]['note']})")
    RESULTS.mkdir(exist_ok=True)
    md = report.markdown(summaries, args.scenarios, meta, scaling)
    (RESULTS / "latest.md").write_text(md)
    print(f"wrote {RESULTS / 'latest.md'}")
    title = (f"lbd vs HAProxy vs nginx — {meta['date']}, {meta['cpu_model']}, "
             f"{meta['nproc']} CPUs, {meta['reps']} x {meta['duration_s']:g}s")  # fmt: skip
    keys = [s.key for s in args.scenarios]
    print(chart.write(summaries, keys, title, RESULTS / "latest.png"))
    return {"summary": [asdict(s) for s in summaries], "workers_scaling": scaling}


def rerender(args: argparse.Namespace) -> int:
    doc = json.loads(args.from_json.read_text())
    runs = [throughput.Run(**r) for r in doc["throughput"]["runs"]]
    render_all(args, runs, doc["meta"])
    return 0


def _retry_late(
    args: argparse.Namespace,
    endpoints: list[Endpoint],
    lab: Lab,
    skipped: dict[str, str],
    scripts: dict[str, Path],
) -> list[throughput.Run]:
    """Proxies still being built elsewhere (lbd-w2) get one more chance after the main run,
    measured interleaved with lbd so the scaling ratio compares like with like."""
    late_keys = [k for k in skipped if k.split("/")[0] in RETRY_LATE]
    runs: list[throughput.Run] = []
    for key in late_keys:
        name, profile = key.split("/")
        try:
            endpoint = lab.start_proxy(name, profile)
        except StartError as e:
            skipped[key] = f"{skipped[key]}\nretried after the main run: {e}"
            print(f"!! {name} still skipped after the main run", file=sys.stderr)
            continue
        del skipped[key]
        pair = [e for e in endpoints if e.name == "lbd" and e.profile == profile] + [endpoint]
        scenarios = [s for s in args.scenarios if s.profile == profile]
        print(f"retrying {name} after the main run, interleaved with lbd", flush=True)
        late = throughput.run_all(
            pair, scenarios, args.reps, args.duration, scripts, lab.placement, _progress
        )
        # lbd's late runs stay apart from its main ones: same process, another moment.
        runs += [replace(r, proxy="lbd-w1") if r.proxy == "lbd" else r for r in late]
    return runs


def run_rss(args: argparse.Namespace, endpoints: list[Endpoint]) -> list[dict[str, Any]]:
    results = [
        rss.measure(e, args.rss_connections)
        for e in endpoints
        if e.pid is not None and e.profile == "plain"
    ]
    print(rss.render(results))
    return [asdict(r) for r in results]


def run_syscalls(endpoints: list[Endpoint], lab: Lab, script: Path) -> list[dict[str, Any]]:
    counts = [
        syscalls.count(e, lab.workdir, script, lab.placement)
        for e in endpoints
        if e.pid is not None and e.profile == "plain"
    ]
    print(syscalls.render(counts))
    return [asdict(c) for c in counts]


def run_phases(args: argparse.Namespace, lab: Lab) -> tuple[dict[str, Any], str]:
    """Start everything, run the chosen measurements; (JSON document, results file name)."""
    doc: dict[str, Any] = {"meta": environment(args, lab.placement)}
    lab.start_backend()
    measuring = not (args.rss or args.syscalls)
    profiles = list(dict.fromkeys(s.profile for s in args.scenarios)) if measuring else ["plain"]
    if "ehr" in profiles:
        lab.start_mocks()
    endpoints, doc["skipped"] = start_endpoints(lab, args.proxies, profiles)
    script = wrk.write_script(lab.workdir)
    if args.rss:
        doc["rss"] = run_rss(args, endpoints)
    if args.syscalls:
        doc["syscalls"] = run_syscalls(endpoints, lab, script)
    if measuring:
        doc["throughput"] = run_throughput(args, endpoints, lab, doc)
    modes = [m for m in ("rss", "syscalls") if getattr(args, m)]
    return doc, f"latest{''.join('-' + m for m in modes)}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args)
    unwind_on_signals()
    placement = Placement.detect(allow_pinning=not args.no_pin)
    if not placement.pinned:
        why = f"{len(usable_cpus())} usable CPU(s) or --no-pin"
        print(f"note: not pinning ({why}): proxy, backend and wrk share CPUs", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="lbd-bench-"))
    workdir.chmod(0o755)  # nginx workers run as nobody when started by root
    lab = Lab(workdir, placement, nofile=rss.raise_nofile())

    def measure() -> int:
        doc, name = run_phases(args, lab)
        write_results(doc, name, args.json)
        return 0

    try:
        return exit_code("bench", measure)
    finally:
        lab.stop()
        if args.keep_workdir:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
