"""The exporter's web listener, the same for one process on SQLite and for a replica on PostgreSQL:
the aiohttp runner with the request limits of the web config, the connection cap, and a bind error
that names the listener."""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from exporter.config import WebConfig
from exporter.config.addresses import parse_listen_address
from exporter.http.guard import Guard, limit_connections
from exporter.http.quiet import QuietAppRunner


async def start_web(app: web.Application, limits: WebConfig, guard: Guard, listen: str,
                    connection_rejected: Callable[[], None]) -> tuple[web.AppRunner, int]:
    """Serve `app` on `listen`; returns the runner (to clean up) and the port bound."""
    host, port = parse_listen_address(listen)
    # keepalive_timeout also closes a connection that has not sent a whole request by then:
    # a client that trickles its headers cannot hold a slot for longer. A malformed request gets a fixed
    # 400 that echoes nothing and is logged without its content (http/quiet.py).
    runner = QuietAppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0,
                           keepalive_timeout=limits.read_timeout_seconds,
                           max_line_size=limits.max_header_bytes, max_field_size=limits.max_header_bytes,
                           max_headers=100)
    await runner.setup()
    assert runner.server is not None
    limit_connections(runner.server, limits.max_connections, connection_rejected)
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=guard.ssl_context)
    try:
        await site.start()
    except OSError as exc:  # in use, or not an address of this host: say which listener
        await runner.cleanup()
        raise OSError(exc.errno, f"web listen address {listen}: {exc.strerror or exc}") from None
    server = site._server
    return runner, server.sockets[0].getsockname()[1] if server and server.sockets else port
