"""`distribute-simulator` / `python -m exporter.simulator`: run the API simulator alone."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from exporter import __version__
from exporter.config.addresses import AddressError, parse_listen_address
from exporter.simulator.faults import DOWN_MODES, FaultError, Faults
from exporter.simulator.runner import SimulatorServer
from exporter.simulator.server import Simulator

DESCRIPTION = """\
A stand-in for Distribute.ai's async inference API: POST /async/{chat,images,speech}/create and
/result answer as the real API does (validated against the published result schema), jobs move
through CREATED -> QUEUED -> [POSTPONED] -> ASSIGNED_CONNECTIONS -> PROCESSING -> COMPLETED|ERROR
with per-model durations, and faults can be injected at start (--fault.*) or at run time with
POST /__admin/faults. GET /__admin/stats counts requests per endpoint, status code and job id.
The OpenAI-compatible routes POST /v1/chat/completions and /v1/images/generations answer at once,
in OpenAI's shapes (an OpenAI client's base URL is http://HOST:PORT/v1; the key is taken raw or
as `Bearer KEY`)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distribute-simulator", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:8080",
                        metavar="HOST:PORT", help="where to listen (default 127.0.0.1:8080; port 0 picks a free one)")
    parser.add_argument("--api-key", dest="api_key", default=os.environ.get("DISTRIBUTE_SIMULATOR_API_KEY"),
                        metavar="KEY", help="require `authorization: KEY` on /async/ requests (or `Bearer KEY` on /v1/), else 401 "
                        "(default: env DISTRIBUTE_SIMULATOR_API_KEY; unset: no auth)")
    parser.add_argument("--timestamps", choices=("iso", "epoch-s", "epoch-ms"), default="iso",
                        help="how created/finished are written (default iso)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="the same seed gives the same job ids, models, durations and outcomes")
    parser.add_argument("--speed", type=float, default=1.0, metavar="F",
                        help="run every job's lifecycle F times faster than real time (default 1)")
    parser.add_argument("--generate", type=float, default=0.0, metavar="RATE",
                        help="create jobs continuously at RATE per second across the three kinds")
    parser.add_argument("--ids-out", dest="ids_out", type=Path, default=None, metavar="DIR",
                        help="with --generate: append each new id to DIR/chat.txt, DIR/images.txt, DIR/speech.txt")
    parser.add_argument("--generate-via", dest="generate_via", default=None, metavar="URL",
                        help="with --generate: create the jobs as an application would, through the API at URL "
                             "(the exporter's proxy, say), and poll each one's result there until it is final")
    parser.add_argument("--generate-poll-seconds", dest="generate_poll", type=float, default=2.0, metavar="S",
                        help="with --generate-via: the application polls each job every S seconds (default 2)")
    parser.add_argument("--print-port", action="store_true",
                        help="print the listening port on stdout once ready (useful with port 0)")
    parser.add_argument("--version", action="version", version=f"distribute-simulator {__version__}")
    for f in dataclasses.fields(Faults):
        flag = "--fault." + f.name.replace("_", "-")
        choices = DOWN_MODES if f.name == "down" else None
        parser.add_argument(flag, dest="fault_" + f.name, default=None, choices=choices, metavar=None if choices else "VALUE",
                            help=Faults.HELP[f.name] + f" (default {f.default if f.default is not dataclasses.MISSING else 'all'})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        host, port = parse_listen_address(args.listen)
        faults = Faults()
        faults.update({f.name: getattr(args, "fault_" + f.name) for f in dataclasses.fields(Faults)
                       if getattr(args, "fault_" + f.name) is not None})
    except (AddressError, FaultError) as exc:
        print(f"distribute-simulator: {exc}", file=sys.stderr)
        return 2
    if args.generate_via is not None and (args.generate <= 0 or args.ids_out is not None):
        print("distribute-simulator: --generate-via needs --generate RATE and replaces --ids-out", file=sys.stderr)
        return 2
    if args.ids_out is not None and args.generate <= 0:
        print("distribute-simulator: --ids-out needs --generate RATE", file=sys.stderr)
        return 2
    sim = Simulator(api_key=args.api_key, timestamps=args.timestamps, seed=args.seed,
                    speed=args.speed, faults=faults)
    try:
        asyncio.run(_serve(sim, host, port, args))
    except OSError as exc:
        print(f"distribute-simulator: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(sim: Simulator, host: str, port: int, args: argparse.Namespace) -> None:
    server = SimulatorServer(sim, host, port)
    await server.start()
    if args.generate_via:
        server.start_application(args.generate_via, args.generate, args.generate_poll, args.seed)
    elif args.generate > 0:
        server.start_generator(args.generate, args.ids_out, args.seed)
    if args.print_port:
        print(server.port, flush=True)
    logging.info("simulator listening on %s (auth %s)", server.url, "on" if sim.api_key else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    sys.exit(main())
