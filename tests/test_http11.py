"""The lean HTTP/1.1 transport against a real socket server on loopback that answers scripted bytes:
every way an answer can be delimited, compressed answers, limits, stale keep-alives, time-outs."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from exporter.polling.client import ApiConnectError, ApiTimeout, BadAnswer, BodyTooLarge
from exporter.polling.http11 import Http11Transport

HEADERS = {"content-type": "application/json", "authorization": "k"}


class Script:
    """A server whose n-th request on any connection gets `answers[n]` (bytes, or a callable on the
    writer); it records each request and how many connections were opened."""

    def __init__(self, answers):
        self.answers, self.requests, self.connections = list(answers), [], 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/async/chat/result"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if callable(answer):
                    if await answer(writer) == "close":
                        return
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def run(answers, *calls, timeout=5.0, max_body=1 << 20):
    """Send one POST per entry of `calls` (its body) in turn; answer the results (or exceptions)
    and the script."""

    async def go():
        script = Script(answers)
        url = await script.start()
        transport = Http11Transport(timeout, 4, max_body)
        results = []
        for body in calls:
            try:
                results.append(await transport.post(url, body, HEADERS))
            except Exception as exc:  # noqa: BLE001 (the test looks at which)
                results.append(exc)
        await transport.close()
        await script.stop()
        return results, script

    return asyncio.run(go())


def test_the_request_is_one_well_formed_post_and_connections_are_kept_alive():
    (first, second), script = run([ok(b'{"a": 1}'), ok(b'{"b": 2}', b"X-Extra: yes\r\n")], b'{"id": "x"}', b'{"id": "y"}')
    assert (first.status, first.body, second.body) == (200, b'{"a": 1}', b'{"b": 2}')
    assert second.headers["x-extra"] == "yes"
    assert script.connections == 1
    request = script.requests[0]
    assert request.startswith(b"POST /async/chat/result HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: k\r\n" in request and request.endswith(b'\r\n\r\n{"id": "x"}')


def test_chunked_until_close_and_interim_answers_are_read_whole():
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n5;x=1\r\n: 12}\r\n0\r\n\r\n'

    async def until_close(writer):
        writer.write(b'HTTP/1.0 200 OK\r\n\r\n{"c": ')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"3}")
        return "close"

    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}")
    results, script = run([chunked, until_close, interim], b"1", b"2", b"3")
    assert [r.body for r in results] == [b'{"a": 12}', b'{"c": 3}', b"{}"]
    assert script.connections == 2  # the answer delimited by the close could not be reused


def test_compressed_answers_are_inflated():
    body = b'{"id": "x", "status": "QUEUED"}'
    results, _ = run([ok(gzip.compress(body), b"Content-Encoding: gzip\r\n"),
                      ok(zlib.compress(body), b"Content-Encoding: deflate\r\n")], b"1", b"2")
    assert [r.body for r in results] == [body, body]


def test_answers_over_the_limit_are_refused_however_they_come():
    big = b"x" * 5000
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"y" * 4096 + b"\r\n0\r\n\r\n"
    bomb = gzip.compress(b"0" * 100_000)
    results, _ = run([ok(big), chunked, ok(bomb, b"Content-Encoding: gzip\r\n"), ok(b"small")],
                     b"1", b"2", b"3", b"4", max_body=2048)
    assert [type(r) for r in results[:3]] == [BodyTooLarge] * 3
    assert results[3].body == b"small"  # and the transport still works


def test_a_keep_alive_closed_by_the_server_is_retried_once_on_a_new_connection():
    async def answer_then_close(writer):
        writer.write(ok(b"first"))
        await writer.drain()
        return "close"

    results, script = run([answer_then_close, ok(b"second")], b"1", b"2")
    assert [r.body for r in results] == [b"first", b"second"]
    assert script.connections == 2 and len(script.requests) == 2


def test_a_connection_cut_mid_answer_or_refused_is_a_connect_error_and_garbage_a_protocol_error():
    async def cut(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{")
        await writer.drain()
        return "close"

    results, _ = run([cut, b"garbage\r\n\r\n"], b"1", b"2")
    assert [type(r) for r in results] == [ApiConnectError, BadAnswer]
    assert results[1].reason == "protocol"

    async def refused():
        return await Http11Transport(1, 1, 1024).post("http://127.0.0.1:9/x", b"{}", HEADERS)

    with pytest.raises(ApiConnectError):
        asyncio.run(refused())


def test_a_server_that_never_answers_times_out_and_the_next_request_works():
    async def hang(writer):
        await asyncio.sleep(2)

    results, script = run([hang, ok(b"later")], b"1", b"2", timeout=0.3)
    assert isinstance(results[0], ApiTimeout) and results[1].body == b"later"
    assert script.connections == 2  # the timed-out connection was not reused


def test_a_header_value_with_a_line_break_is_never_sent():
    async def go():
        transport = Http11Transport(1, 1, 1024)
        with pytest.raises(ValueError):
            await transport.post("http://127.0.0.1:9/x", b"{}", {"authorization": "k\r\nx-injected: 1"})

    asyncio.run(go())


def test_https_verifies_the_server_certificate(tmp_path, monkeypatch):
    import ssl

    from test_security import make_pki

    pki = make_pki(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(pki["server.crt"]), str(pki["server.key"]))

    async def go(trusted: bool):
        script = Script([ok(b'{"tls": true}')])
        script.server = await asyncio.start_server(script._serve, "127.0.0.1", 0, ssl=server_context)
        port = script.server.sockets[0].getsockname()[1]
        if trusted:  # OpenSSL's default verify paths honour SSL_CERT_FILE
            monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca.crt"]))
        transport = Http11Transport(5, 1, 1024)
        try:
            return await transport.post(f"https://127.0.0.1:{port}/async/chat/result", b"{}", HEADERS)
        except ApiConnectError as exc:
            return exc
        finally:
            await transport.close()
            await script.stop()

    assert isinstance(asyncio.run(go(trusted=False)), ApiConnectError)
    assert asyncio.run(go(trusted=True)).body == b'{"tls": true}'


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
HOSTILE = {  # answers llhttp refuses: each fails its own request, and the next request still works
    "negative chunk size": CHUNKED + b"-6\r\n",
    "signed chunk size": CHUNKED + b"+2\r\n{}\r\n0\r\n\r\n",
    "0x chunk size": CHUNKED + b"0x2\r\n{}\r\n0\r\n\r\n",
    "underscore chunk size": CHUNKED + b"1_0\r\n",
    "overflowing chunk size": CHUNKED + b"f" * 20 + b"\r\n",
    "no CRLF after chunk data": CHUNKED + b"2\r\n{}XX0\r\n\r\n",
    "two Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "Content-Length and Transfer-Encoding": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "signed Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    "garbage after the answer": ok(b"{}") + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "text after the answer": ok(b"{}") + b"zzz",
    "101 instead of an answer": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_malformed_answer_is_a_protocol_error_and_its_connection_is_never_reused(case):
    (bad, good), script = run([HOSTILE[case], ok(b'{"next": 1}')], b"1", b"2", timeout=3)
    assert isinstance(bad, BadAnswer), (case, bad)
    assert good.body == b'{"next": 1}'
    assert script.connections == 2  # the connection that carried the bad answer was closed


def test_a_chunk_size_is_never_read_as_a_signed_number():
    """The old loop read `-6` with int(x, 16) and walked backwards forever: with a deadline far off,
    the request must still fail at once (and the event loop stay free to run this test's timer)."""

    async def go():
        script = Script([CHUNKED + b"-6\r\n" + b"x" * 64])
        url = await script.start()
        transport = Http11Transport(60, 1, 1 << 20)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(BadAnswer, match="chunk size"):
                    await transport.post(url, b"{}", HEADERS)
        finally:
            await transport.close()
            await script.stop()

    asyncio.run(go())


def test_a_huge_content_length_or_an_endless_chunk_is_too_large_at_once():
    async def endless(writer):
        writer.write(CHUNKED + b"fffffff\r\n")
        for _ in range(400):
            writer.write(b"z" * 8192)
            await writer.drain()
        return "close"

    results, _ = run([b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{", endless, ok(b"{}")],
                     b"1", b"2", b"3", timeout=5, max_body=64 * 1024)
    assert [type(r) for r in results[:2]] == [BodyTooLarge, BodyTooLarge]
    assert results[2].body == b"{}"


def test_trailers_extensions_and_connection_close_among_tokens():
    answer = CHUNKED + b"2;ext=1\r\n{}\r\n0\r\nX-Trailer: t\r\n\r\n"
    close = b"HTTP/1.1 200 OK\r\nConnection: close, x\r\nContent-Length: 2\r\n\r\n{}"
    results, script = run([answer, close, ok(b"[]")], b"1", b"2", b"3")
    assert [r.body for r in results] == [b"{}", b"{}", b"[]"]
    assert script.connections == 2  # `close` among other tokens still closes


def test_at_most_max_connections_requests_at_once_and_a_cancelled_waiter_frees_nothing_twice():
    """Six requests with two slots: never more than two at the server at once, all answered in
    turn; a request cancelled while it waits for a slot neither takes one nor leaks one."""
    state = {"now": 0, "peak": 0}
    gate = asyncio.Event

    async def slow(writer):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await state["gate"].wait()
        state["now"] -= 1
        writer.write(ok(b"done"))
        await writer.drain()

    async def go():
        state["gate"] = gate()
        script = Script([slow] * 7)
        url = await script.start()
        transport = Http11Transport(5.0, 2, 1024)
        tasks = [asyncio.ensure_future(transport.post(url, b"%d" % i, HEADERS)) for i in range(6)]
        while state["now"] < 2:
            await asyncio.sleep(0.01)
        tasks[4].cancel()  # waiting for a slot
        await asyncio.sleep(0.05)
        state["gate"].set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        last = await transport.post(url, b"last", HEADERS)  # the slots all came back
        await transport.close()
        await script.stop()
        return results, last, transport._slots.free

    results, last, free = asyncio.run(go())
    assert isinstance(results[4], asyncio.CancelledError)
    assert [r.body for i, r in enumerate(results) if i != 4] == [b"done"] * 5 and last.body == b"done"
    assert state["peak"] == 2 and free == 2


def test_a_time_out_on_a_reused_connection_is_not_sent_again():
    """The deadline is the request's: past it, ApiTimeout, never a second try on a new connection
    (only a connection closed before any answer is tried again)."""
    async def hang(writer):
        await asyncio.sleep(2)

    results, script = run([ok(b"first"), hang, ok(b"third")], b"1", b"2", b"3", timeout=0.3)
    assert results[0].body == b"first" and isinstance(results[1], ApiTimeout) and results[2].body == b"third"
    assert len(script.requests) == 3 and script.connections == 2
