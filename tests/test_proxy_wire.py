"""The proxy's fast path at the byte level: what it takes and what it leaves to aiohttp, the heads it
writes, chunked bodies cut at every byte, and real exchanges with a scripted API over loopback
(interim answers, trailers, answers framed by the connection's end, HEAD, pipelining, an API that
breaks off, and a connection handed over to aiohttp halfway)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from exporter.config import ProxyConfig
from exporter.metrics.proxy import ProxyStats
from exporter.sources.proxy import Proxy, ProxyHooks
from exporter.sources.proxy_answer import Chunked, ChunkError
from exporter.sources.proxy_wire import SMALL_BODY, BadRequest, parse_answer, parse_request, upstream_head

# -- what the fast path takes ------------------------------------------------------------------------------


def test_a_plain_request_is_taken_with_its_body_length_group_and_path():
    request, size = parse_request(b"POST /async/chat/result?x=1 HTTP/1.1\r\nHost: p\r\nContent-Length: 12\r\n"
                                  b"X-Distribute-Group:  team-a \r\nAuthorization: secret")
    assert (request.method, request.path, size, request.group, request.close) == (
        b"POST", "/async/chat/result?x=1", 12, "team-a", False)
    absolute, _ = parse_request(b"GET http://elsewhere.example/v1/models?a=b HTTP/1.1\r\nHost: x")
    assert absolute.path == "/v1/models?a=b"  # only its path and query: the API is always api.base_url
    closing, _ = parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close")
    assert closing.close


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.0\r\nHost: x",                                     # HTTP/1.0: aiohttp's
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",                  # a streamed body
    b"POST / HTTP/1.1\r\nContent-Length: %d" % (SMALL_BODY + 1),       # a large one
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade",
    b"OPTIONS * HTTP/1.1",
    # a framing field named by Connection would be dropped while the body still went: the API would
    # read the body as the next request on a pooled connection (smuggling)
    b"POST / HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 5",
    b"GET / HTTP/1.1\r\nConnection: close, host\r\nHost: x",
])
def test_anything_unusual_is_left_to_aiohttp(head):
    assert parse_request(head) is None


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3",      # repeated: smuggling's tool
    b"POST / HTTP/1.1\r\nContent-Length: +3",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
    b"GET / HTTP/1.1\r\nX-A: 1\r\n folded",                            # obs-fold
    b"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2",                               # a bare LF
    b"GET / HTTP/1.1\r\nAuthorization: sk-1\r\r\nX-B: 2",              # a stray CR
    b"GET / HTTP/1.1\r\nX-A: a\x01b",                                  # a control character
    b"GET / HTTP/1.1\r\nAuthorization : k",                             # a space before the colon
    b"GET / HTTP/1.1\r\nNo colon here",
    b"GET / HTTP/1.1 x",
    b"POST http://[ HTTP/1.1\r\nHost: x",                                # an absolute target that is not a URL
    b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101,                         # too many fields
    b"GET / HTTP/1.1\r\nX-A: 1",                                         # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b",                             # two
])
def test_what_llhttp_refuses_is_a_bad_request(head):
    with pytest.raises(BadRequest):
        parse_request(head)


def test_the_head_sent_upstream_drops_hop_by_hop_fields_and_the_group_and_names_the_api():
    request, _ = parse_request(b"POST /async/chat/create HTTP/1.1\r\nHost: proxy:9\r\nConnection: keep-alive, X-Private"
                               b"\r\nX-Private: hop\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic eA=="
                               b"\r\nX-Distribute-Group: g\r\nauthorization: key\r\nX-Custom: Kept As Is\r\n"
                               b"Via: 1.1 lb\r\nContent-Length: 2")
    head = upstream_head(request, b"api.example:443", b"/base")
    assert head == (b"POST /base/async/chat/create HTTP/1.1\r\nHost: api.example:443\r\nauthorization: key\r\n"
                    b"X-Custom: Kept As Is\r\nVia: 1.1 lb\r\nContent-Length: 2\r\nVia: 1.1 distribute-exporter\r\n\r\n")


# -- answers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, method, framing, reusable", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"POST", "length", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"HEAD", "none", True),
    (b"HTTP/1.1 204 No Content", b"POST", "none", True),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9", b"GET", "none", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", b"GET", "chunked", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip", b"GET", "close", False),
    (b"HTTP/1.1 200 OK", b"GET", "close", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close", b"GET", "length", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5", b"GET", "length", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive", b"GET", "length", True),
])
def test_an_answer_is_framed_as_http_says(head, method, framing, reusable):
    answer = parse_answer(head, method)
    assert (answer.framing, answer.reusable) == (framing, reusable)
    assert answer.head.startswith(b"HTTP/1.1 ") and answer.head.endswith(b"\r\n\r\n")
    assert (b"Connection: close\r\n" in answer.head) == (framing == "close")


def test_the_answer_fields_go_back_as_they_came_minus_the_hop_by_hop_ones():
    """The head is passed on from its bytes (one search for the fields the policy reads or drops)."""
    answer = parse_answer(b"HTTP/1.1 200 OK\r\nX-A:  spaced \t\r\nconnection: keep-alive\r\nKEEP-ALIVE: 5\r\n"
                          b"Proxy-X: 1\r\nTE: x\r\nUpgrade: h2c\r\nX-Te: kept\r\nContent-Length:  0 ", b"GET")
    assert answer.head == b"HTTP/1.1 200 OK\r\nX-A:  spaced \t\r\nX-Te: kept\r\nContent-Length:  0 \r\n\r\n"
    assert (answer.framing, answer.length, answer.reusable) == ("length", 0, True)
    assert parse_answer(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 99 + b"Content-Length: 0", b"GET") is not None
    assert parse_answer(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 100 + b"Content-Length: 0", b"GET") is None  # 101 fields
    assert parse_answer(b"HTTP/1.0 200 OK\r\nContent-Length: 0", b"GET").reusable is False

def test_the_answer_head_keeps_the_api_fields_and_drops_hop_by_hop_ones():
    answer = parse_answer(b"HTTP/1.1 200 OK\r\nX-Upstream: yes\r\nConnection: keep-alive, X-Hop\r\nX-Hop: no\r\n"
                          b"Keep-Alive: timeout=5\r\nContent-Encoding: GZIP\r\nContent-Length: 3", b"POST")
    assert answer.head == (b"HTTP/1.1 200 OK\r\nX-Upstream: yes\r\nContent-Encoding: GZIP\r\nContent-Length: 3\r\n\r\n")
    assert answer.encoding == "gzip"
    assert parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4", b"GET") is None
    assert parse_answer(b"HTTP/1.1 2000 OK", b"GET") is None
    assert parse_answer(b"HTTP/1.1 103 Early Hints\r\nLink: </a>", b"GET").status == 103
    # The answer's own framing goes on with its body, even when Connection names it.
    named = parse_answer(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 3", b"GET")
    assert b"Content-Length: 3\r\n" in named.head and named.framing == "length"


CHUNKED = (b"5;ext=1\r\nhello\r\n1A\r\n" + b"abcdefghijklmnopqrstuvwxyz" + b"\r\n0\r\nX-Trailer: t\r\n\r\n")


def test_the_end_of_a_chunked_body_is_found_wherever_the_bytes_are_cut():
    extra = b"\r\n\r\n"  # line ends after the body (llhttp skips them) are not part of it
    stream = CHUNKED + extra
    for cut in range(len(stream) + 1):
        for second_cut in (cut, (cut + len(stream)) // 2):
            body = Chunked(1 << 20)
            used_total, ended = 0, False
            for piece in (stream[:cut], stream[cut:second_cut], stream[second_cut:]):
                if ended or not piece:
                    continue
                used = body.feed(piece)
                if used < 0:
                    used_total += -1 - used
                    ended = True
                else:
                    used_total += used
            assert ended and used_total == len(CHUNKED), cut
            assert body.decoded() == b"hello" + b"abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("bad", [b"zz\r\n", b"5\r\nhelloXY", b"5\nhello\r\n", b"1" * 9000, b"0x5\r\n", b"-5\r\n",
                                 b"+5\r\n", b"5_0\r\n", b"-6\r\n", b" 5\r\n", b"5 \r\nhello\r\n",
                                 CHUNKED + b"HTTP/1.1 200 OK\r\n"])
def test_a_broken_chunked_body_is_refused(bad):
    with pytest.raises(ChunkError):
        Chunked(0).feed(bad)


def test_a_chunked_body_over_the_keep_bound_is_not_kept():
    body = Chunked(4)
    assert body.feed(CHUNKED) < 0 and body.decoded() is None


# -- real exchanges over loopback -----------------------------------------------------------------------------

SCRIPTS = {
    # path: the answer's bytes, as the API would write them (in pieces: each piece one write)
    "/interim": [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    "/chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhel",
                 b"lo\r\n6\r\n world\r\n0\r\nX-T: 1\r\n", b"\r\n"],
    "/until-close": [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ", b"it", None],
    "/head": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"],
    "/cut": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", None],
    "/no-head": [b"HTTP/1.1 200 O", None],
    "/stall": [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", b""],  # b"": silence
    "/stream": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"] + [b"4\r\ndata\r\n"] * 300,
    "/async/speech/create": [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 << 20), b"y" * (2 << 20)],
    "/both-framings": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\n\r\n"],
    "/two-lengths": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"],
    "/minus-six": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n"],
    "/status-2000": [b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"],
    "/switching": [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"],
    "/empty": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    "/large": [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 << 20), b"x" * (8 << 20)],
    "/async/chat/result": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                           b"%x\r\n%s\r\n0\r\n\r\n"],
}
RESULT = json.dumps({"id": "0c2f5a34-8d7e-4b1a-a6f0-3e9d2c1b7a55", "status": "COMPLETED"}).encode()


async def scripted_api(seen: list[bytes]) -> asyncio.AbstractServer:
    """An API that answers each request with the pieces SCRIPTS names for its path (None: close)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                if b"transfer-encoding: chunked" in head.lower():
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readuntil(b"\r\n")
                path = head.split(b" ")[1].decode().split("?")[0]
                served += 1
                if path == "/once-per-connection" and served > 1:
                    writer.close()  # as an API closing a keep-alive connection just as it is reused
                    return
                for number, piece in enumerate(SCRIPTS.get(path, [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body])):
                    if piece == b"":
                        await asyncio.sleep(30)
                    if piece is None:
                        writer.close()
                        return
                    if path == "/async/chat/result" and b"%" in piece:
                        piece = piece.replace(b"%x", b"%x" % len(RESULT)).replace(b"%s", RESULT)
                    if writer.is_closing() or reader.at_eof():
                        seen.append(b"cut after %d" % number)  # the proxy let the connection go
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)  # separate packets: the proxy must join them
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def raw(port: int, data: bytes, until: bytes | None = None) -> bytes:
    """Send `data` on one connection; read until `until` has arrived, or to the connection's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        while until is None or until not in got:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


async def until(condition, what: str, seconds: float = 10.0) -> None:
    """Wait for `condition()` to hold, failing after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def exchanges(scenario, timeout: float = 60.0, live: dict | None = None) -> tuple[ProxyStats, list[bytes], list]:
    """Run `scenario(port)` against a proxy in front of the scripted API; `live` (if given) holds
    the proxy's stats and the heads the API saw while it runs."""
    observed: list = []

    async def created(*args: object) -> None:
        return None

    async def run() -> tuple[ProxyStats, list[bytes]]:
        seen: list[bytes] = []
        api = await scripted_api(seen)
        base = f"http://127.0.0.1:{api.sockets[0].getsockname()[1]}"
        stats = ProxyStats()
        if live is not None:
            live.update(stats=stats, seen=seen)
        proxy = Proxy(ProxyHooks(created, lambda *a: observed.append(a)), stats,
                      lambda: ProxyConfig(timeout_seconds=timeout), lambda: base, 1 << 20)
        await proxy.start("127.0.0.1", 0, None)
        try:
            await scenario(proxy.port)
        finally:
            await proxy.stop()
            api.close()
        return stats, seen

    stats, seen = asyncio.run(run())
    return stats, seen, observed


def test_interim_trailers_until_close_and_head_answers_pass_and_the_connection_goes_on():
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        got["keep"] = await raw(port, b"GET /interim HTTP/1.1\r\nHost: p\r\n\r\nGET /chunked HTTP/1.1\r\nHost: p\r\n\r\n"
                                      b"HEAD /head HTTP/1.1\r\nHost: p\r\n\r\nPOST /echo HTTP/1.1\r\nHost: p\r\n"
                                      b"Content-Length: 4\r\n\r\nlast", until=b"last")
        got["close"] = await raw(port, b"GET /until-close HTTP/1.1\r\nHost: p\r\n\r\n")
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/chunked")
            got["httpx"] = answer.content

    stats, seen, _ = exchanges(scenario)
    keep = got["keep"]
    # Four answers on one connection, in order: the interim one dropped, the chunked one whole with
    # its trailer, the HEAD without a body, the echo last.
    assert keep.count(b"HTTP/1.1 200 OK\r\n") == 4 and b"103" not in keep
    assert b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n" in keep
    assert keep.index(b"Content-Length: 5\r\n\r\nHTTP/1.1 200 OK") > 0  # nothing after the HEAD's head
    assert keep.endswith(b"Content-Length: 4\r\n\r\nlast")
    assert got["close"].endswith(b"\r\n\r\nall of it") and b"Connection: close" in got["close"]
    assert got["httpx"] == b"hello world"
    assert sum(stats.requests.values()) == 6 and stats.errors[("upstream_body",)] == 0


def test_an_api_that_breaks_off_cuts_the_answer_or_gives_502_and_nothing_is_retried():
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        got["cut"] = await raw(port, b"GET /cut HTTP/1.1\r\nHost: p\r\n\r\n")
        got["no-head"] = await raw(port, b"GET /no-head HTTP/1.1\r\nHost: p\r\n\r\n", until=b"}")

    stats, seen, _ = exchanges(scenario)
    assert got["cut"].endswith(b"only ten b")  # the head was out: the connection is cut, short of 100 bytes
    assert got["no-head"].startswith(b"HTTP/1.1 502 Bad Gateway") and b"message" in got["no-head"]
    assert stats.errors[("upstream_body",)] == 1 and stats.errors[("connect",)] == 1
    assert len(seen) == 2  # once each


def test_a_connection_handed_to_aiohttp_halfway_keeps_working_and_a_chunked_result_is_observed():
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        # A fast-path request, then a chunked one (aiohttp's) on the same connection, then a result.
        got["both"] = await raw(port, b"POST /first HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nfirst"
                                      b"POST /second HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"6\r\nsecond\r\n0\r\n\r\n", until=b"second")
        body = json.dumps({"id": "0c2f5a34-8d7e-4b1a-a6f0-3e9d2c1b7a55"}).encode()
        got["result"] = await raw(port, b"POST /async/chat/result HTTP/1.1\r\nHost: p\r\nX-Distribute-Group: gr\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body), until=b"0\r\n\r\n")

    stats, seen, observed = exchanges(scenario)
    assert got["both"].count(b"HTTP/1.1 200") == 2 and got["both"].endswith(b"second")
    assert b"\r\n\r\n" + RESULT in got["result"].replace(b"%x\r\n" % len(RESULT), b"")
    assert [o[:3] for o in observed] == [("0c2f5a34-8d7e-4b1a-a6f0-3e9d2c1b7a55", "chat", "gr")]
    assert json.loads(observed[0][4]) == json.loads(RESULT)  # the body as the hooks read it: decoded
    assert not any(b"x-distribute-group" in s.lower() for s in seen)


def test_keep_alive_connections_idle_too_long_are_closed_and_busy_ones_kept():
    from exporter.sources import proxy as proxy_module
    from exporter.sources.proxy_wire import CLIENT_IDLE_SECONDS

    class Stub:
        def __init__(self, busy: bool, idle: float) -> None:
            self.busy, self.last_active, self.closed = busy, proxy_module.time.monotonic() - idle, False

        def close(self) -> None:
            self.closed = True

    clients = [Stub(False, CLIENT_IDLE_SECONDS + 1), Stub(True, CLIENT_IDLE_SECONDS + 1), Stub(False, 1)]
    proxy_module.close_idle(set(clients))  # type: ignore[arg-type]
    assert [c.closed for c in clients] == [True, False, False]


def test_an_empty_answer_ends_at_once_and_the_connection_goes_on():
    got: dict[str, float] = {}

    async def scenario(port: int) -> None:
        started = asyncio.get_running_loop().time()
        answers = await raw(port, b"GET /empty HTTP/1.1\r\nHost: p\r\n\r\nPOST /echo HTTP/1.1\r\nHost: p\r\n"
                                  b"Content-Length: 4\r\n\r\nnext", until=b"next")
        got["seconds"] = asyncio.get_running_loop().time() - started
        got["answers"] = answers.count(b"HTTP/1.1 200 OK")  # type: ignore[assignment]

    stats, _, _ = exchanges(scenario, timeout=5)
    # Both answered long before the 5 s timeout that an unfinished empty answer would have waited for.
    assert got["answers"] == 2 and got["seconds"] < 4
    assert stats.errors[("timeout",)] == 0 and stats.errors[("upstream_body",)] == 0


def test_an_application_reading_slowly_gets_the_whole_answer_and_the_api_connection_is_not_pooled_paused():
    """8 MiB through an application that stops reading for longer than proxy.timeout_seconds: the
    proxy stops reading the API meanwhile (flow control), which is not the API's silence; afterwards
    the same API connection serves the next request at once."""
    got: dict[str, object] = {}

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.transport.set_write_buffer_limits(0)
        writer.write(b"GET /large HTTP/1.1\r\nHost: p\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        writer.transport.pause_reading()
        await asyncio.sleep(2.5)  # longer than the 1 s timeout, with the proxy's reads paused
        writer.transport.resume_reading()
        body = await asyncio.wait_for(reader.readexactly(8 << 20), 30)
        got["whole"] = head.startswith(b"HTTP/1.1 200") and body == b"x" * (8 << 20)
        started = asyncio.get_running_loop().time()
        got["next"] = await raw(port, b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\n\r\nnext",
                                until=b"next")
        got["next_seconds"] = asyncio.get_running_loop().time() - started
        writer.close()

    stats, seen, _ = exchanges(scenario, timeout=1)
    assert got["whole"] is True
    assert got["next"].startswith(b"HTTP/1.1 200 OK") and got["next_seconds"] < 0.9  # type: ignore[union-attr,operator]
    assert stats.errors[("upstream_body",)] == 0 and stats.errors[("timeout",)] == 0


def test_a_connection_paused_for_a_slow_application_is_resumed_before_it_is_pooled():
    """The read that ends an answer may be the one that pauses the API connection (the application's
    buffer just filled): pooled paused, the next request on it would wait for a read that never comes."""
    from exporter.sources.proxy_upstream import Pool, Upstream

    class Transport:
        reading = True

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

        def close(self) -> None:
            pass

    conn = Upstream()
    conn.connection_made(Transport())  # type: ignore[arg-type]
    conn.pause()
    assert conn.transport.reading is False  # type: ignore[union-attr]
    pool = Pool("http://127.0.0.1:9")
    pool.give_back(conn)
    assert pool.idle == [conn] and not conn.paused and conn.transport.reading is True  # type: ignore[union-attr]


def test_an_application_that_hangs_up_mid_answer_lets_the_api_go_and_a_silent_api_is_cut_after_the_timeout():
    got: dict[str, object] = {}
    live: dict = {}

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: p\r\n\r\n")
        await reader.readuntil(b"data")
        writer.close()  # the application leaves after the first chunk (an SDK closing its stream)
        await until(lambda: any(s.startswith(b"cut after") for s in live["seen"]), "the API let go")
        started = asyncio.get_running_loop().time()
        got["stall"] = await raw(port, b"GET /stall HTTP/1.1\r\nHost: p\r\n\r\n")
        got["stall_seconds"] = asyncio.get_running_loop().time() - started

    stats, seen, _ = exchanges(scenario, timeout=1, live=live)
    cut = [s for s in seen if s.startswith(b"cut after")]
    assert cut and int(cut[0].split()[-1]) < 200, cut  # not all 300 chunks were produced for nobody
    assert stats.errors[("client",)] == 1
    # Silence is measured from the API's last byte: cut one timeout later, not up to two.
    assert got["stall"].endswith(b"half") and 0.9 <= got["stall_seconds"] < 1.6  # type: ignore[union-attr,operator]
    assert stats.errors[("upstream_body",)] == 1


def test_a_pooled_connection_the_api_closed_is_retried_for_a_get_but_never_for_a_post():
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        for name, method in (("get1", b"GET"), ("get2", b"GET"), ("post1", b"POST"), ("post2", b"POST")):
            got[name] = await raw(port, method + b" /once-per-connection HTTP/1.1\r\nHost: p\r\nContent-Length: 2"
                                  b"\r\n\r\nhi", until=b"\r\n\r\n")

    stats, seen, _ = exchanges(scenario)
    assert got["get1"].startswith(b"HTTP/1.1 200") and got["get2"].startswith(b"HTTP/1.1 200")
    # The GET's second connection was pooled; the API closes it as the POST goes out on it: a POST
    # (a create) is never sent twice, the application gets the 502 and decides.
    assert got["post1"].startswith(b"HTTP/1.1 502") and got["post2"].startswith(b"HTTP/1.1 200")
    assert stats.errors[("connect",)] == 1
    assert sum(1 for s in seen if s.startswith(b"POST")) == 2  # the first POST was sent once


def test_a_create_answer_too_long_to_hold_is_streamed_and_counted():
    got: dict[str, bytes] = {}
    live: dict = {}

    async def scenario(port: int) -> None:
        got["create"] = await raw(port, b"POST /async/speech/create HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}",
                                  until=b"y" * 1000)
        # Counted once the whole answer went through the proxy.
        await until(lambda: live["stats"].requests[("create", "200")] >= 1, "the create counted")

    stats, _, _ = exchanges(scenario, live=live)
    assert got["create"].startswith(b"HTTP/1.1 200")
    assert stats.requests[("create", "200")] == 1


@pytest.mark.parametrize("path", ["/both-framings", "/two-lengths", "/minus-six", "/status-2000", "/switching"])
def test_a_malformed_answer_never_reaches_the_application_on_either_path(path):
    """On the fast path llhttp refuses the answer (502); on a connection handed to aiohttp, aiohttp's
    client decides, and what goes back never carries both framing fields."""
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        # Connection: close: each answer is read to the connection's end, whatever its framing.
        got["fast"] = await raw(port, b"GET %s HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n" % path.encode())
        got["aiohttp"] = await raw(port, b"POST %s HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n" % path.encode())

    stats, _, _ = exchanges(scenario, timeout=3)
    if path == "/minus-six":  # the head was fine and went back: the bad chunk cuts the connection
        assert got["fast"].endswith(b"chunked\r\n\r\n") and stats.errors[("upstream_body",)] >= 1
    else:
        assert got["fast"].startswith(b"HTTP/1.1 502 Bad Gateway"), got["fast"]
    for answer in got.values():
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert not (b"\r\ncontent-length:" in head and b"\r\ntransfer-encoding:" in head), answer
        assert b"-6" not in answer and b"2000" not in head


def test_a_head_and_body_sent_in_many_pieces_are_each_read_once(monkeypatch):
    """A 60 KB head and a 64 KiB body in 3,000 pieces: llhttp reads each byte of the head once, and
    the body's bytes are only counted (the old reader parsed the whole head again for every piece)."""
    from exporter.sources import proxy_wire

    fed: list[int] = []
    take = proxy_wire.RequestHead.take

    def counting(self, buffer):
        before = self.fed
        end = take(self, buffer)
        fed.append(self.fed - before)
        return end

    monkeypatch.setattr(proxy_wire.RequestHead, "take", counting)
    body = b"b" * SMALL_BODY
    head = (b"POST /echo HTTP/1.1\r\nHost: p\r\n" + b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 600) for i in range(95))
            + b"Content-Length: %d\r\n\r\n" % len(body))
    message = head + body
    got: dict[str, bytes] = {}

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        step = len(message) // 3000 + 1
        for number, at in enumerate(range(0, len(message), step)):
            writer.write(message[at:at + step])
            await writer.drain()
            if number % 20 == 0:
                await asyncio.sleep(0.002)  # let pieces arrive apart
        got["answer"] = await asyncio.wait_for(reader.readuntil(body), 30)
        writer.close()

    exchanges(scenario)
    assert got["answer"].startswith(b"HTTP/1.1 200 OK")
    # Each byte of the head read once, in pieces, and not one of the body's.
    assert len(fed) > 10 and sum(fed) == len(head) and len(head) > 57_000


def test_a_head_whose_blank_line_comes_apart_is_read_wherever_it_is_cut():
    """A client that writes its head's lines and then the blank line on its own (or a packet cut
    inside the final CRLF CRLF): the head ends in the later read, and the request is served at once
    (the search for the blank line had started at the new bytes and never found it)."""
    from exporter.sources.proxy_wire import RequestHead

    head = b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n"
    for cut in range(1, len(head)):
        reader, buffer = RequestHead(0), bytearray(head[:cut])
        assert reader.take(buffer) == -1
        buffer += head[cut:]
        assert reader.take(buffer) == len(head), cut
    got: list[bytes] = []

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for cut in (1, 2, 3):  # the last 1, 2 or 3 bytes of the blank line in a later packet
            writer.write(head[:-cut])
            await writer.drain()
            await asyncio.sleep(0.05)  # apart: two reads on the proxy's side
            writer.write(head[-cut:] + b"ok")
            got.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5))
        writer.close()

    exchanges(scenario)
    assert len(got) == 3 and all(answer.startswith(b"HTTP/1.1 200 OK") for answer in got)


def test_an_answer_read_whole_goes_back_in_one_write_and_a_head_alone_at_once():
    """The head and the body's first bytes, when they come in one read, go back in one write (a send
    on loopback costs more than the rest of the forwarding); a head whose body has not come yet goes
    back at once, never held for its body."""
    from exporter.sources.proxy_answer import Exchange

    class Upstream:
        def close(self) -> None:
            pass

    class Client:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

    async def run() -> dict[str, list[bytes]]:
        got = {}
        for name, pieces in {
            "whole": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            "apart": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"],
            "chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", b"0\r\n\r\n"],
            "empty": [b"HTTP/1.1 204 No Content\r\n\r\n"],
        }.items():
            client = Client()
            exchange = Exchange(client, Upstream(), b"POST", False, 0, 1 << 16)  # type: ignore[arg-type]
            for piece in pieces:
                exchange.from_api(piece)
                got.setdefault(name, []).append(b"|".join(client.writes))
            assert exchange.done.done()
        return got

    got = asyncio.run(run())
    assert got["whole"] == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    assert got["apart"] == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n|ok"]
    assert got["chunked"] == [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
                              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n|0\r\n\r\n"]
    assert got["empty"] == [b"HTTP/1.1 204 No Content\r\n\r\n"]
