"""An API that answers some job ids with malformed HTTP: the exporter's poll client must fail those
requests one by one and go on with the rest.

    python tests/hostile_upstream.py    -> prints its port, serves until SIGTERM

The answer depends on the job id in the request body: an id in HOSTILE gets that case's bytes (an
`endless` case sends chunk data until the exporter hangs up); any other id gets a well-formed 200 of
a job still QUEUED. `GET /__count/<id>` (plain HTTP, then close) says how many requests an id had.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter

CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def case_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


HOSTILE: dict[str, bytes | None] = {  # None: the endless chunk
    "negative_chunk_size": CHUNKED + b"-6\r\n",
    "endless_chunk": None,
    "huge_content_length": b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{\"id\": ",
    "two_content_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\n{}",
    "te_and_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "garbage_after": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}\x00\x01garbage\r\n\r\n",
    "status_2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
}
IDS = {case_id(i + 1): name for i, name in enumerate(HOSTILE)}
COUNTS: Counter[str] = Counter()


def good(job_id: str) -> bytes:
    body = json.dumps({"id": job_id, "status": "QUEUED", "created": 1764000000, "model": "m"}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /__count/"):
                job_id = head.split(b" ")[1].rsplit(b"/", 1)[1].decode()
                body = str(COUNTS[job_id]).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                return
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            job_id = json.loads(await reader.readexactly(length))["id"]
            COUNTS[job_id] += 1
            name = IDS.get(job_id)
            if name is None:
                writer.write(good(job_id))
                await writer.drain()
                continue
            answer = HOSTILE[name]
            if answer is None:  # one chunk that never ends, in small pieces, until the reader hangs up
                writer.write(CHUNKED + b"7fffffff\r\n")
                while True:
                    writer.write(b"z" * 16384)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            writer.write(answer)
            await writer.drain()
            # The hostile connection stays open (a keep-alive the client must not take up again).
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, IndexError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
