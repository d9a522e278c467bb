"""Command line: argument parsing and dispatch only (see CONTRACT.md for the commands).

Exit codes: 0 success; 1 invalid configuration or rejected reload; 2 usage error; 3 cannot bind
or start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, TextIO

from lbd import __version__
from lbd.errors import ConfigErrors

if TYPE_CHECKING:
    from lbd.config.schema import Config

DEFAULT_CONFIG = "/etc/lbd/lbd.yaml"
EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_START = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbd", description="Layer-7 HTTP load balancer for hospital information systems."
    )
    parser.add_argument("--version", action="version", version=f"lbd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run in the foreground (logs to stdout/stderr)")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("-c", "--config", required=True, metavar="FILE")

    reload = sub.add_parser("reload", help="ask the running daemon to re-read its file")
    reload.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE")

    ctl = sub.add_parser("ctl", help="send one admin-socket command and print the answer")
    ctl.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE")
    ctl.add_argument("words", nargs="+", metavar="COMMAND")

    demo = sub.add_parser("demo", help="mock EHR backends + lbd with conf/demo.yaml")
    demo.add_argument("-c", "--config", default=None, metavar="FILE")

    # Internal: a worker process spawned by the master (`global.workers` >= 2).
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("--control-fd", required=True, type=int)
    worker.add_argument("--listeners-fd", required=True, type=int)
    worker.add_argument("--index", required=True, type=int)
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    mock = sub.add_parser("mock", help="run one mock EHR backend")
    mock.add_argument("--name", required=True)
    mock.add_argument("--port", required=True, type=int)
    mock.add_argument("--host", default="127.0.0.1")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    command: str = args.command
    if command == "check":
        return cmd_check(args.config)
    if command == "run":
        return cmd_run(args.config, args.log_level)
    if command == "worker":
        from lbd.process.child import child_main

        _setup_logging(args.log_level)
        return child_main(args.control_fd, args.listeners_fd, args.index)
    if command == "mock":
        from lbd.mock.app import mock_main

        return mock_main(args.name, args.host, args.port)
    if command == "demo":
        from lbd.mock.demo import demo_main

        return demo_main(args.config)
    if command in ("reload", "ctl"):
        from lbd.admin.client import ctl_main, reload_main

        if command == "reload":
            return reload_main(args.config)
        return ctl_main(args.config, args.words)
    parser.print_usage(sys.stderr)
    return EXIT_USAGE


def _load(path: str, errors_to: TextIO) -> Config | None:
    """The validated configuration, or None after printing one `FILE:LINE: key: message` line
    per error (unreadable files included: the loader reports them the same way)."""
    from lbd.config.load import load_config

    try:
        return load_config(path)
    except ConfigErrors as errors:
        for err in errors.errors:
            print(err, file=errors_to)
        return None


def cmd_check(path: str) -> int:
    cfg = _load(path, sys.stdout)
    if cfg is None:
        return EXIT_CONFIG
    from lbd.tls.context import load_tls

    try:
        load_tls(cfg)  # certificate, key and CA files must load, as `run` and `reload` need
    except ConfigErrors as errors:
        for err in errors.errors:
            print(err)
        return EXIT_CONFIG
    print("configuration valid")
    return EXIT_OK


def _setup_logging(log_level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s lbd[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(path: str, log_level: str) -> int:
    from lbd.process.master import worker_count
    from lbd.process.worker import StartError, Worker

    _setup_logging(log_level)
    cfg = _load(path, sys.stderr)
    if cfg is None:
        return EXIT_CONFIG

    import uvloop

    count = worker_count(cfg.global_.workers)
    if count >= 2:
        try:
            return uvloop.run(_serve_master(cfg, count, log_level))
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
            return EXIT_OK

    async def serve() -> int:
        worker = Worker(cfg)
        try:
            await worker.start()
        except StartError as exc:
            print(f"lbd: {exc}", file=sys.stderr)
            return EXIT_START
        await worker.run_until_stopped()
        return EXIT_OK

    try:
        return uvloop.run(serve())
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve_master(cfg: Config, count: int, log_level: str) -> int:
    """`global.workers` >= 2: this process binds and supervises; workers serve."""
    from lbd.process.master import Master
    from lbd.process.worker import StartError

    master = Master(cfg, count, log_level)
    try:
        await master.start()
    except StartError as exc:
        print(f"lbd: {exc}", file=sys.stderr)
        await master.graceful_stop()
        return EXIT_START
    return await master.run()


if __name__ == "__main__":
    raise SystemExit(main())
