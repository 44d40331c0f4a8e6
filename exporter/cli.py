"""`distribute-exporter`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine

from exporter import __version__
from exporter.config import RING_GONE, AddressError, Config, ConfigError, check_state, load_config
from exporter.config.addresses import parse_listen_address
from exporter.logs import setup_logging
import exporter.tracking.pg  # noqa: F401 - registers the PostgreSQL backend when its driver is installed
from exporter.tracking.backends import BackendMissing, backend_for
from exporter.tracking.store import StateError

log = logging.getLogger("distribute.exporter")

STOP_SECONDS = 4.0  # SIGTERM to exit: within Kubernetes' and Docker's patience, with room to spare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distribute-exporter",
        description="Prometheus exporter for Distribute.ai's async inference API: polls the result "
                    "endpoints for the job ids it is given and serves what it learns on /metrics.")
    parser.add_argument("--config.file", dest="config_file", default="config.yaml", metavar="PATH",
                        help="the config file (default config.yaml)")
    parser.add_argument("--web.listen-address", dest="listen", default=None, metavar="HOST:PORT",
                        help="where to serve /metrics; overrides web.listen_address (default 0.0.0.0:9877)")
    parser.add_argument("--proxy.listen-address", dest="proxy_listen", default=None, metavar="HOST:PORT",
                        help="serve the pass-through proxy for the async API here; overrides "
                             "proxy.listen_address (default: off; conventional port 9878)")
    parser.add_argument("--web.config.file", dest="web_config", default=None, metavar="PATH",
                        help="TLS and basic auth in the Prometheus exporter-toolkit format; overrides web.config_file")
    parser.add_argument("--state.url", dest="state_url", default=None, metavar="URL",
                        help="the shared PostgreSQL database of several replicas, "
                             "postgresql://user@host:port/dbname (no password); overrides state.url")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=("debug", "info", "warn", "warning", "error"), help="log level (default info)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json"),
                        help="log line format (default logfmt)")
    parser.add_argument("--event-loop", dest="event_loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                        help="the event loop: uvloop when it is installed (auto, the default), or Python's own "
                             "asyncio loop")
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="load and validate the config, print a one-line verdict, exit 0 if valid, else 1")
    parser.add_argument("--demo", action="store_true",
                        help="start the API simulator in-process with generated jobs and watch it")
    parser.add_argument("--version", action="version", version=f"distribute-exporter {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["state"]:  # distribute-exporter state export ...
        from exporter.state_command import main as state_main
        return state_main(argv[1:])
    ring_flag = next((a for a in argv if a.startswith("--shard.")), None)
    if ring_flag is not None:  # before argparse, whose answer to an unknown flag is a usage text and exit 2
        print(f"distribute-exporter: {ring_flag.split('=', 1)[0]}: {RING_GONE}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    level = "warning" if args.log_level == "warn" else args.log_level
    setup_logging(level, args.log_format)
    if args.demo:
        from exporter.demo import run_demo
        return run_demo(args.listen, args.proxy_listen, runner(args.event_loop))
    try:
        config = with_state_url(load_config(args.config_file), args.state_url)
    except ConfigError as exc:
        if args.config_check:
            print(f"invalid: {exc}")
        else:
            log.error("cannot load the config: %s", exc)
        return 1
    web_config = args.web_config or (str(config.resolve(config.web.config_file)) if config.web.config_file else None)
    if args.config_check and web_config:
        from exporter.http.webconfig import WebConfigError, load_web_config
        try:
            load_web_config(Path(web_config))
        except WebConfigError as exc:
            print(f"invalid: web config {exc}")
            return 1
    if args.config_check:
        groups = len(config.jobs)
        ids = sum(len(g.ids) for g in config.jobs)
        print(f"valid: {args.config_file}{' (PostgreSQL state)' if config.state.url else ''} ({groups} job groups, {ids} ids listed inline)")
        return 0
    for warning in config.warnings:
        log.warning("%s", warning)
    if args.proxy_listen is not None:
        try:
            parse_listen_address(args.proxy_listen)
        except AddressError as exc:
            log.error("--proxy.listen-address: %s", exc)
            return 1
    if config.state.url:
        try:
            backend_for(config.state.url)
        except BackendMissing as exc:
            log.error("%s", exc)
            return 1
    return run_exporter(config, args.config_file, args.listen, args.web_config, args.proxy_listen,
                        args.event_loop)


def with_state_url(config: Config, url: str | None) -> Config:
    """--state.url over the config's state.url, checked the same way (form only: no connection)."""
    if url is None:
        return config
    check_state(url, "--state.url")
    return dataclasses.replace(config, state=dataclasses.replace(config.state, url=url))


def runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """What runs the exporter's main coroutine: uvloop's loop when installed (auto) or asked for
    (--event-loop uvloop: an error when missing), else asyncio's own. uvloop does the socket and
    timer work in C: about a third less CPU per proxied request (README, Dependencies)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.run
    return asyncio.run


def run_exporter(config, config_path: str | None, listen: str | None, web_config: str | None = None,
                 proxy_listen: str | None = None,
                 event_loop: str = "auto") -> int:
    from exporter.app import Exporter
    from exporter.http.webconfig import WebConfigError

    async def serve() -> int:
        try:
            if config.state.url:  # several replicas sharing PostgreSQL (app/shared.py)
                from exporter.app.shared import SharedExporter
                exporter = SharedExporter(config, config_path, listen, web_config=web_config,
                                          proxy_listen=proxy_listen)
            else:
                exporter = Exporter(config, config_path, listen, web_config=web_config,
                                    proxy_listen=proxy_listen)
        except WebConfigError as exc:
            log.error("cannot load the web config: %s", exc)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        log.debug("event loop: %s", "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio")
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(exporter.reload()))
        try:
            starting = loop.create_task(exporter.start())
            done, _ = await asyncio.wait({starting, loop.create_task(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()
                await stop.wait()
            else:
                starting.cancel()
        except (StateError, OSError) as exc:
            log.error("%s", exc if isinstance(exc, StateError) else f"cannot start: {exc.strerror or exc}")
            await exporter.stop()  # close what was opened; nothing is written
            return 1
        log.info("stopping")
        try:
            await asyncio.wait_for(exporter.stop(), timeout=STOP_SECONDS)
        except asyncio.TimeoutError:
            log.warning("shutdown took longer than %gs; exiting anyway", STOP_SECONDS)
        return 0

    return runner(event_loop)(serve())


if __name__ == "__main__":
    sys.exit(main())
