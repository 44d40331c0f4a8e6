"""A tiny HTTP server that the proxy tests put upstream where the simulator cannot serve: it echoes
bodies and headers, sends large or chunked answers, and hangs on request.

    python tests/upstream.py    -> prints its port, serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import signal
import sys

from aiohttp import web


def pattern(n: int) -> bytes:
    """n bytes that are not all alike, so that a shifted or dropped chunk shows."""
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


async def echo(request: web.Request) -> web.StreamResponse:
    digest, size = hashlib.sha256(), 0
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
        await response.write(chunk)
    await response.write_eof()
    return response


async def headers(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"method": request.method, "path_qs": request.raw_path,
                              "headers": [[k, v] for k, v in request.headers.items()],
                              "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body),
                              "peer_port": request.transport.get_extra_info("peername")[1]},  # type: ignore[union-attr]
                             headers={"X-Upstream": "yes", "Connection": "keep-alive, X-Hop",
                                      "X-Hop": "must not pass", "Keep-Alive": "timeout=5"})


async def big(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "0"))
    data = pattern(n)
    if request.query.get("chunked"):
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, n, 100_000):
            await response.write(data[start:start + 100_000])
        await response.write_eof()
        return response
    return web.Response(body=data, content_type="application/octet-stream")


GZIP_JOB_ID = "5b0e3f8e-7a47-4c36-9d55-2f1c7f0e9a11"


async def gzip_create(request: web.Request) -> web.Response:
    """A create answered compressed, as an API behind a CDN does when the client accepts gzip."""
    await request.read()
    body = json.dumps({"id": GZIP_JOB_ID}).encode()
    if "gzip" not in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=gzip.compress(body), content_type="application/json",
                        headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})


RESULT_JOB_IDS = {"chunked": "0c2f5a34-8d7e-4b1a-a6f0-3e9d2c1b7a55", "long": "7d4e1f20-5c3b-4a9e-b8d6-1f0a2e3c4b66"}


async def long_result(request: web.Request) -> web.StreamResponse:
    """A final chat answer over 64 KiB (long content), sent chunked or with a Content-Length."""
    how = request.query.get("how", "long")
    body = json.dumps({"id": RESULT_JOB_IDS[how], "status": "COMPLETED", "model": "Llama-X",
                       "created": "2026-11-24T09:00:00Z", "finished": "2026-11-24T09:00:05Z",
                       "output": "x" * 100_000}).encode()
    if how == "long":
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(body), 16_384):
        await response.write(body[start:start + 16_384])
    await response.write_eof()
    return response


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response(text="late")


async def main() -> None:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/headers{tail:.*}", headers)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/hang", hang)
    app.router.add_post("/async/chat/create", gzip_create)
    app.router.add_post("/async/chat/result", long_result)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
