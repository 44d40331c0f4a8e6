"""Start and stop the simulator's listener; "down: refuse" closes it until the fault is lifted."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from aiohttp import web

from exporter.simulator.application import Application
from exporter.simulator.server import Simulator, build_app, generate


class SimulatorServer:
    """A running simulator on HOST:PORT (port 0 picks a free one), in the current event loop."""

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self._runner = web.AppRunner(build_app(sim), handler_cancellation=True, access_log=None)
        self._site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lift: asyncio.TimerHandle | None = None
        sim.down_changed = self._apply_down

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._open()  # even when starting down: the port is chosen and kept for later
        if self.sim.faults.down:
            await self._apply_down()

    async def _open(self) -> None:
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            server = self._site._server  # the port the OS chose, kept across down/up cycles
            assert server is not None and server.sockets
            self.port = server.sockets[0].getsockname()[1]

    async def _apply_down(self) -> None:
        faults = self.sim.faults
        if faults.down and faults.down_seconds > 0:
            if self._lift is not None:
                self._lift.cancel()
            self._lift = asyncio.get_running_loop().call_later(
                faults.down_seconds, lambda: asyncio.ensure_future(self._lift_down()))
        refusing = faults.down == "refuse"
        if refusing and self._site is not None:
            await self._site.stop()
            self._site = None
            # site.stop() leaves kept-alive connections open; a real outage does not.
            for conn in list(self._runner.server.connections if self._runner.server else []):
                conn.force_close()
        elif not refusing and self._site is None:
            await self._open()

    async def _lift_down(self) -> None:
        self._lift = None
        self.sim.faults.down = None
        await self._apply_down()

    def start_generator(self, rate: float, ids_out: Path | None, seed: int | None = None) -> None:
        rng = random.Random(None if seed is None else seed + 2)
        self._tasks.append(asyncio.create_task(generate(self.sim, rate, ids_out, rng)))

    def start_application(self, via: str, rate: float, poll_seconds: float, seed: int | None = None,
                          group: str | None = None) -> Application:
        """Play an application that creates jobs at `rate` through `via` and follows each to its end."""
        rng = random.Random(None if seed is None else seed + 3)
        app = Application(via, self.sim.api_key, group, poll_seconds)

        async def run() -> None:
            async with app:
                await app.generate(rate, rng)

        self._tasks.append(asyncio.create_task(run()))
        return app

    async def stop(self) -> None:
        if self._lift is not None:
            self._lift.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._runner.cleanup()
