"""`distribute-exporter --demo`: the simulator and the exporter in one process, for a first look."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Coroutine

from exporter.config import Config, JobGroup, PollConfig, StateConfig, WebConfig, ApiConfig
from exporter.simulator.runner import SimulatorServer
from exporter.simulator.server import Simulator

log = logging.getLogger("distribute.demo")

DEMO_RATE = 2.0  # jobs created per second
DEMO_SPEED = 10.0  # the simulated lifecycle runs ten times faster than real time
DEMO_PROXIED_RATE = 1.0  # jobs per second an application creates and follows through the proxy
DEMO_APP_POLL_SECONDS = 1.0


def demo_config(api_url: str, ids_dir: Path, listen: str) -> Config:
    groups = tuple(JobGroup(kind=kind, group="demo", ids_file=str(ids_dir / f"{kind}.txt"))
                   for kind in ("chat", "images", "speech"))
    return Config(api=ApiConfig(base_url=api_url, max_requests_per_second=50),
                  poll=PollConfig(interval_seconds=2, max_interval_seconds=20, not_found_grace_seconds=30),
                  jobs=groups, web=WebConfig(listen_address=listen),
                  state=StateConfig(path=":memory:"))


def run_demo(listen: str | None, proxy_listen: str | None = None,
             run: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run) -> int:
    from exporter.app import Exporter

    async def serve() -> int:
        with tempfile.TemporaryDirectory(prefix="distribute-demo-") as tmp:
            ids_dir = Path(tmp)
            sim_server = SimulatorServer(Simulator(speed=DEMO_SPEED), "127.0.0.1", 0)
            await sim_server.start()
            sim_server.start_generator(DEMO_RATE, ids_dir)
            exporter = Exporter(demo_config(sim_server.url, ids_dir, listen or "127.0.0.1:0"),
                                proxy_listen=proxy_listen or "127.0.0.1:0")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                await exporter.start()
            except OSError as exc:
                log.error("cannot start the demo: %s", exc.strerror or exc)
                await sim_server.stop()
                return 1
            assert exporter.proxying.url is not None
            sim_server.start_application(exporter.proxying.url, DEMO_PROXIED_RATE, DEMO_APP_POLL_SECONDS,
                                         group="demo-app")
            print(f"distribute-exporter demo: simulator at {sim_server.url} creating {DEMO_RATE:g} jobs/s\n"
                  f"  proxy:        {exporter.proxying.url} (an application creates {DEMO_PROXIED_RATE:g} job/s "
                  "through it and follows each)\n"
                  f"  status page:  {exporter.url}/\n"
                  f"  metrics:      {exporter.url}/metrics\n"
                  "Press Ctrl-C to stop.", flush=True)
            await stop.wait()
            await exporter.stop()
            await sim_server.stop()
            return 0

    return run(serve())
