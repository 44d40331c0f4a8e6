"""The proxy's deadlines and connection cap against real sockets on loopback: a head trickled byte by
byte, half a head (on the fast path and on a connection handed to aiohttp), a stalled body, and
thousands of idle connections past `proxy.max_connections`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from exporter.config import ProxyConfig
from exporter.metrics.proxy import ProxyStats
from exporter.sources.proxy import Proxy, ProxyHooks
from test_proxy_wire import raw, scripted_api

TIMEOUT = 1.5  # proxy.header_timeout_seconds in these tests


def run(scenario, **settings) -> ProxyStats:
    async def go() -> ProxyStats:
        api = await scripted_api([])
        base = f"http://127.0.0.1:{api.sockets[0].getsockname()[1]}"
        stats = ProxyStats()

        async def created(*args: object) -> None:
            return None

        config = ProxyConfig(**{"timeout_seconds": 10, "header_timeout_seconds": TIMEOUT, **settings})
        proxy = Proxy(ProxyHooks(created, lambda *a: None), stats, lambda: config, lambda: base, 1 << 20)
        await proxy.start("127.0.0.1", 0, None)
        try:
            await scenario(proxy.port, stats)
        finally:
            await proxy.stop()
            api.close()
        return stats

    return asyncio.run(go())


async def closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pieces: list[bytes],
                       gap: float) -> tuple[float, bytes]:
    """Send `pieces` `gap` seconds apart (stopping when the proxy hangs up); the seconds until the
    proxy closed the connection, and what it sent."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = b""

    async def read() -> None:
        nonlocal got
        while chunk := await reader.read(65536):
            got += chunk

    reading = loop.create_task(read())
    for piece in pieces:
        if reading.done():
            break
        writer.write(piece)
        await asyncio.wait((reading,), timeout=gap)
    await asyncio.wait_for(reading, 30)  # fails the test if the proxy never hangs up
    writer.close()
    return loop.time() - started, got


@pytest.mark.parametrize("how", ["trickle", "half-head", "half-head-handed-over", "stalled-body"])
def test_a_slow_application_is_disconnected_within_the_header_timeout(how):
    result: dict[str, object] = {}

    async def scenario(port: int, stats: ProxyStats) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 8\r\n\r\n"
        if how == "trickle":  # one byte every TIMEOUT/3: each gap is short, the whole head is not
            pieces, gap = [bytes([b]) for b in head], TIMEOUT / 3
        elif how == "stalled-body":
            pieces, gap = [head + b"abc"], 60
        else:
            pieces, gap = [head[:25]], 60
        if how == "half-head-handed-over":  # a chunked request hands the connection to aiohttp first
            writer.write(b"POST /echo HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            await reader.readuntil(b"ok")
        result["seconds"], result["got"] = await closed_after(reader, writer, pieces, gap)
        result["slow"] = stats.errors[("slow_client",)]

    run(scenario)
    seconds = result["seconds"]
    assert TIMEOUT - 0.2 <= seconds < TIMEOUT + 1.0, seconds  # type: ignore[operator]
    assert result["got"] == b"" and result["slow"] == 1


def test_a_body_whose_pieces_come_within_the_timeout_is_forwarded():
    result: dict[str, bytes] = {}

    async def scenario(port: int, stats: ProxyStats) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 6\r\n\r\n")
        for byte in b"slowly":  # 6 gaps of TIMEOUT/2: longer in all than the timeout, each shorter
            await asyncio.sleep(TIMEOUT / 2)
            writer.write(bytes([byte]))
        result["got"] = await asyncio.wait_for(reader.readuntil(b"slowly"), 30)
        writer.close()

    stats = run(scenario)
    assert result["got"].startswith(b"HTTP/1.1 200 OK") and stats.errors[("slow_client",)] == 0


def test_idle_connections_past_the_cap_wait_and_a_new_client_is_served_once_slots_free():
    """2,000 connections that send nothing, with proxy.max_connections at 200: at most 200 are open
    at once (the rest wait in the listen backlog, counted), each is let go after the header timeout,
    and a client that comes after them all is answered."""
    cap, idle_count = 200, 2000
    result: dict[str, object] = {}

    async def scenario(port: int, stats: ProxyStats) -> None:
        loop = asyncio.get_running_loop()
        most = 0

        def watch() -> None:
            nonlocal most
            most = max(most, stats.connections)
            watcher[0] = loop.call_later(0.01, watch)

        watcher = [loop.call_later(0, watch)]
        idle = []
        for _ in range(idle_count):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))  # completed by the kernel's backlog
            idle.append(sock)
        started = loop.time()
        answer = await raw(port, b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\n\r\nlast", until=b"last")
        result.update(answer=answer, seconds=loop.time() - started, most=most, capped=stats.capped)
        watcher[0].cancel()
        for sock in idle:
            sock.close()

    run(scenario, max_connections=cap, header_timeout_seconds=0.5)
    assert result["answer"].startswith(b"HTTP/1.1 200 OK")  # type: ignore[union-attr]
    assert 0 < result["most"] <= cap and result["capped"] >= 1  # type: ignore[operator]


@pytest.mark.parametrize("key, value", [("header_timeout_seconds", "0"), ("header_timeout_seconds", "soon"),
                                        ("max_connections", "0"), ("max_connections", "1.5")])
def test_the_keys_are_validated_when_the_config_is_loaded(tmp_path, key, value):
    from helpers import REPO, write_config

    bad = write_config(tmp_path, f"proxy: {{listen_address: '127.0.0.1:0', {key}: {value}}}\n")
    out = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(bad), "--config.check"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and out.stdout.startswith(f"invalid: proxy.{key}"), out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    good = write_config(tmp_path, "proxy: {listen_address: '127.0.0.1:0', header_timeout_seconds: 2.5, "
                                  "max_connections: 64}\n")
    ok = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(good), "--config.check"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
