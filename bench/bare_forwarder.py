"""The least a Python process can do to forward HTTP/1.1: for the `proxy` bench's ceiling, not a proxy.

Each application connection gets one connection to the upstream; messages are cut by their
`Content-Length` and passed on as they are (no header is read or changed, nothing is observed,
nothing is stored). Whatever any Python proxy does on top of this costs more CPU, so its rate is an
upper bound for the exporter's proxy on the same machine, event loop (uvloop) and upstream.

    python bench/bare_forwarder.py UPSTREAM_PORT LISTEN_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


def _messages(buffer: bytearray) -> list[bytes]:
    """Take the whole messages (head and Content-Length body) off the front of `buffer`."""
    out = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out
        at = buffer.lower().find(b"\r\ncontent-length:", 0, end)
        size = int(buffer[at + 17:buffer.find(b"\r\n", at + 2)]) if at >= 0 else 0
        if len(buffer) < end + 4 + size:
            return out
        out.append(bytes(buffer[:end + 4 + size]))
        del buffer[:end + 4 + size]


class _Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.buffer = bytearray()
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in _messages(self.buffer):
            peer = self.peer
            if peer is None or peer.transport is None:
                self.waiting.append(message)
            elif not peer.transport.is_closing():
                peer.transport.write(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Application(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(_Side, "127.0.0.1", int(sys.argv[1]))
        upstream.peer, self.peer = self, upstream
        for message in self.waiting:
            upstream.transport.write(message)  # type: ignore[union-attr]


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(_Application, "127.0.0.1", int(sys.argv[2]))
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
