"""The project's HTTP/1.1 reading against llhttp (httptools) and aiohttp's own parser, on a few hundred
generated hostile requests, answers and chunk streams: the test fails wherever the project takes
what either reference refuses, or frames a message differently (another body, another status).

Generated: Content-Length and Transfer-Encoding variants and conflicts, obs-fold, NUL/CR/VT/DEL in
values, whitespace before the colon, bare LF/CR, signed/huge/0x/_ chunk sizes, chunk extensions,
trailers, interim and 101/204/304 answers, HEAD.
"""

from __future__ import annotations

import asyncio
import itertools

import httptools
import pytest
from aiohttp import http_parser
from aiohttp.base_protocol import BaseProtocol

from exporter.polling.http11 import _Answer as PollAnswer
from exporter.polling.transport import BadAnswer as PollBadAnswer, BodyTooLarge
from exporter.sources.proxy_answer import Chunked, ChunkError
from exporter.sources.proxy_wire import AnswerHead, BadAnswer, BadRequest, RequestHead, answer_of, take_request

# -- generated messages ----------------------------------------------------------------------------------

LENGTHS = [b"5", b"05", b"+5", b"-5", b" 5", b"5 ", b"0x5", b"5_0", b"5,5", b"5.0", b"99999999999999999999999",
           b"", b"\x0b5"]
CODINGS = [b"chunked", b"Chunked", b"CHUNKED", b"chunked, identity", b"identity, chunked", b"gzip, chunked",
           b"xchunked", b"chunked\x0b", b" chunked", b"chunked;q=1", b"identity"]
BAD_BYTES = [b"\x00", b"\r", b"\x0b", b"\x0c", b"\x7f", b"\x01", b"\x1f", b"\n", b"\xff", b"\t"]


def request_heads() -> list[tuple[str, bytes]]:
    base = [b"POST /async/chat/create HTTP/1.1", b"GET /v1/models?a=b HTTP/1.1", b"HEAD / HTTP/1.1"]
    cases: list[tuple[str, bytes]] = []
    for line in base:
        ok = line + b"\r\nHost: api\r\n"
        for value in LENGTHS:
            cases.append(("cl " + repr(value), ok + b"Content-Length: " + value + b"\r\n\r\nhello"))
        for a, b in itertools.combinations([b"5", b"6", b"05"], 2):
            cases.append(("two cl", ok + b"Content-Length: " + a + b"\r\nContent-Length: " + b + b"\r\n\r\nhelloo"))
        cases.append(("same cl twice", ok + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"))
        for coding in CODINGS:
            cases.append(("te " + repr(coding), ok + b"Transfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
            cases.append(("te+cl " + repr(coding), ok + b"Content-Length: 5\r\nTransfer-Encoding: " + coding
                          + b"\r\n\r\nhello"))
        for bad in BAD_BYTES:
            cases.append(("value " + repr(bad), ok + b"X-A: a" + bad + b"b\r\nContent-Length: 5\r\n\r\nhello"))
            cases.append(("name " + repr(bad), ok + b"X" + bad + b"A: ab\r\nContent-Length: 5\r\n\r\nhello"))
            cases.append(("line " + repr(bad), line.replace(b" /", b" /" + bad) + b"\r\nHost: api\r\n\r\n"))
        for space in (b" ", b"\t"):
            cases.append(("space before colon", ok + b"Content-Length" + space + b": 5\r\n\r\nhello"))
            cases.append(("space before colon (auth)", ok + b"Authorization" + space + b": k\r\n\r\n"))
        cases += [
            ("obs-fold", ok + b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"),
            ("obs-fold of a length", ok + b"Content-Length:\r\n 5\r\n\r\nhello"),
            ("bare LF", line + b"\nHost: api\nContent-Length: 5\n\nhello"),
            ("bare LF in head", ok + b"X-A: 1\nContent-Length: 5\r\n\r\nhello"),
            ("bare CR", ok + b"X-A: 1\rContent-Length: 5\r\n\r\nhello"),
            ("no host", line + b"\r\nContent-Length: 5\r\n\r\nhello"),
            ("two hosts", ok + b"Host: other\r\n\r\n"),
            ("empty name", ok + b": x\r\n\r\n"),
            ("leading line ends", b"\r\n" + ok + b"\r\n"),
            ("connection names length", ok + b"Connection: content-length\r\nContent-Length: 5\r\n\r\nhello"),
            ("stray CR key", ok + b"Authorization: sk-1\r\r\n\r\n"),
        ]
    for target in (b"http://[", b"http://a:b/", b"http://h:99999/x", b"https://h/p?q", b"*", b"h:443", b"//x",
                   b"/a b", b"/%zz", b"http://h/\x7f"):
        cases.append(("target " + repr(target), b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"))
    for version in (b"HTTP/1.0", b"HTTP/1.10", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b"HTTP/1"):
        cases.append(("version " + repr(version), b"GET / " + version + b"\r\nHost: h\r\n\r\n"))
    for method in (b"get", b"G\x00T", b"FOO", b"PATCH", b"GET\t"):
        cases.append(("method " + repr(method), method + b" / HTTP/1.1\r\nHost: h\r\n\r\n"))
    return cases


CHUNK_SIZES = [b"5", b"05", b"+5", b"-5", b" 5", b"5 ", b"0x5", b"5_0", b"5;ext=1", b'5;ext="q"', b"5;", b"5 ;x",
               b"fffffffffffffffffffff", b"", b"5\x00", b"-6"]
TRAILERS = [b"", b"X-T: 1\r\n", b"X-T : 1\r\n", b"X-T: a\x00\r\n", b"Content-Length: 5\r\n", b"X-T: 1\n"]


def answers() -> list[tuple[str, bytes, bytes]]:
    """(what, answer, request method)."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    cases: list[tuple[str, bytes, bytes]] = []
    for size in CHUNK_SIZES:
        cases.append(("chunk size " + repr(size), chunked + size + b"\r\nhello\r\n0\r\n\r\n", b"GET"))
    for trailer in TRAILERS:
        cases.append(("trailer " + repr(trailer), chunked + b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n", b"GET"))
    cases += [
        ("no CRLF after data", chunked + b"5\r\nhelloXX0\r\n\r\n", b"GET"),
        ("bare LF after size", chunked + b"5\nhello\r\n0\r\n\r\n", b"GET"),
        ("last chunk ext", chunked + b"5\r\nhello\r\n0;x=y\r\n\r\n", b"GET"),
        ("line ends after body", chunked + b"5\r\nhello\r\n0\r\n\r\n\r\n", b"GET"),
        ("bytes after body", chunked + b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"GET"),
    ]
    for value in LENGTHS:
        cases.append(("cl " + repr(value), b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nhello", b"GET"))
    for coding in CODINGS:
        cases.append(("te " + repr(coding), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding
                      + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"GET"))
        cases.append(("te+cl " + repr(coding), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: "
                      + coding + b"\r\n\r\nhello", b"GET"))
    for status in (b"100 Continue", b"103 Early Hints", b"101 Switching Protocols", b"204 No Content",
                   b"304 Not Modified", b"2000 OK", b"20 OK", b"200", b"200 ", b"999 X", b"099 X", b"200 O\x00K"):
        body = b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\nhello"
        if status.startswith((b"100", b"103")):
            body += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        cases.append(("status " + repr(status), body, b"GET"))
    for bad in BAD_BYTES:
        cases.append(("value " + repr(bad), b"HTTP/1.1 200 OK\r\nX-A: a" + bad + b"b\r\nContent-Length: 5\r\n\r\nhello",
                      b"GET"))
    cases += [
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", b"GET"),
        ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", b"GET"),
        ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", b"GET"),
        ("bare CR", b"HTTP/1.1 200 OK\rContent-Length: 5\r\n\r\nhello", b"GET"),
        ("HTTP/1.0 until close", b"HTTP/1.0 200 OK\r\n\r\nhello", b"GET"),
        ("until close", b"HTTP/1.1 200 OK\r\n\r\nhello", b"GET"),
        ("HEAD with length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD"),
        ("HEAD with chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD"),
        ("HEAD with 204", b"HTTP/1.1 204 No Content\r\n\r\n", b"HEAD"),
        ("bytes after length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE", b"GET"),
    ]
    return cases


# -- the references ----------------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.body = b""
        self.complete = 0

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def llhttp_request(data: bytes) -> bytes | None:
    """The first request's body as llhttp reads it; None when it refuses (or an upgrade)."""
    recorder = Recorder()
    try:
        httptools.HttpRequestParser(recorder).feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    return recorder.body if recorder.complete else None


def llhttp_response(data: bytes, close: bool) -> tuple[int, bytes] | None:
    recorder = Recorder()
    parser = httptools.HttpResponseParser(recorder)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        if not recorder.complete:
            return None
    if not recorder.complete and close:
        return parser.get_status_code(), recorder.body  # until the connection's end
    return (parser.get_status_code(), recorder.body) if recorder.complete else None


def aiohttp_messages(data: bytes, response: bool, method: bytes = b"GET") -> list[tuple[object, bytes]] | None:
    """aiohttp's (C) parser: each message and its body; None when it refuses."""

    async def parse() -> list[tuple[object, bytes]] | None:
        loop = asyncio.get_running_loop()
        protocol = BaseProtocol(loop)
        if response:
            parser = http_parser.HttpResponseParser(protocol, loop, 1 << 16, max_line_size=65536,
                                                    max_field_size=65536,
                                                    response_with_body=method != b"HEAD", read_until_eof=True,
                                                    auto_decompress=False)
        else:
            parser = http_parser.HttpRequestParser(protocol, loop, 1 << 16, max_line_size=65536,
                                                   max_field_size=65536, auto_decompress=False)
        try:
            messages, _, _ = parser.feed_data(data)
            if response:
                parser.feed_eof()
        except Exception:  # noqa: BLE001 (every refusal of aiohttp's counts as one)
            return None
        out = []
        for message, payload in messages:
            body = b"".join(getattr(payload, "_buffer", ()))  # noqa: SLF001 (what was read of the payload so far)
            if payload.exception() is not None:
                return None
            out.append((message, body))
        return out

    return asyncio.run(parse())


# -- the project's reading ------------------------------------------------------------------------------------

def project_request(data: bytes) -> tuple[bytes, bytes] | str:
    """As the fast path reads it: 'refused', 'handed over', 'incomplete', or (method, body)."""
    head = RequestHead(len(data) - len(data.lstrip(b"\r\n")))
    try:
        end = head.take(bytearray(data))
        if end < 0:
            return "incomplete"
        taken = take_request(head)
    except BadRequest:
        return "refused"
    if taken is None:
        return "handed over"
    request, size = taken
    if len(data) < end + size:
        return "incomplete"
    return request.method, data[end:end + size]


def project_answer(data: bytes, method: bytes) -> tuple[int, bytes, bytes, int] | str:
    """As the fast path reads an answer: 'refused', 'incomplete', or (status, head, body decoded, bytes
    it spans: what follows is not passed on, and the connection is not used again)."""
    head = AnswerHead()
    try:
        start = head.take(bytearray(data))
        if start < 0:
            return "incomplete"
    except BadAnswer:
        return "refused"
    answer = answer_of(head, method)
    rest = data[start:]
    if answer.framing == "none":
        return answer.status, answer.head, b"", start
    if answer.framing == "length":
        if len(rest) < answer.length:
            return "incomplete"
        return answer.status, answer.head, rest[:answer.length], start + answer.length
    if answer.framing == "close":
        return answer.status, answer.head, rest, len(data)
    body = Chunked(1 << 20)
    try:
        used = body.feed(rest)
    except ChunkError:
        return "refused"
    return (answer.status, answer.head, body.decoded() or b"", start - 1 - used) if used < 0 else "incomplete"


def poll_answer(data: bytes) -> tuple[int, bytes] | str:
    answer = PollAnswer(1 << 20)
    try:
        answer.feed(data)
    except (PollBadAnswer, BodyTooLarge):
        return "refused"
    if not answer.complete:
        return (answer.parser.get_status_code(), b"".join(answer.parts)) if answer.until_close() else "incomplete"
    return answer.status, b"".join(answer.parts)


# -- the comparisons -------------------------------------------------------------------------------------------

REQUESTS = request_heads()
ANSWERS = answers()


def test_there_are_a_few_hundred_cases():
    assert len(REQUESTS) + len(ANSWERS) >= 300


@pytest.mark.parametrize("what, data", REQUESTS, ids=[f"{i}-{w}" for i, (w, _) in enumerate(REQUESTS)])
def test_a_request_the_fast_path_takes_is_one_both_references_take_alike(what, data):
    ours = project_request(data)
    if isinstance(ours, str):
        return  # refused (400) or left to aiohttp's own parser: nothing taken here
    method, body = ours
    assert llhttp_request(data) == body, f"llhttp frames {what!r} otherwise"
    theirs = aiohttp_messages(data, response=False)
    assert theirs, f"aiohttp refuses {what!r}, which the fast path takes"
    message, their_body = theirs[0]
    assert (message.method.encode(), their_body) == (method, body), what  # type: ignore[attr-defined]


@pytest.mark.parametrize("what, data, method", ANSWERS, ids=[f"{i}-{w}" for i, (w, _, _) in enumerate(ANSWERS)])
def test_an_answer_the_proxy_or_the_poller_takes_is_one_both_references_take_alike(what, data, method):
    ours = project_answer(data, method)
    if not isinstance(ours, str):
        status, head, body, spans = ours
        lower = head.lower()
        assert not (b"\r\ncontent-length:" in lower and b"\r\ntransfer-encoding:" in lower), what
        data = data[:spans]  # the references read what the proxy passed on
        theirs = aiohttp_messages(data, response=True, method=method)
        assert theirs, f"aiohttp refuses {what!r}, which the proxy passes on"
        final = [(m, b) for m, b in theirs if m.code >= 200]  # type: ignore[attr-defined]
        assert final and (final[0][0].code, final[0][1]) == (status, body), what  # type: ignore[attr-defined]
        if method != b"HEAD":  # llhttp alone cannot know the request was a HEAD
            assert llhttp_response(data, close=True) == (status, body), f"llhttp frames {what!r} otherwise"
    if method == b"HEAD":
        return
    polled = poll_answer(data)
    if not isinstance(polled, str):
        assert llhttp_response(data, close=True) == polled, f"llhttp frames {what!r} otherwise (poll client)"
        theirs = aiohttp_messages(data, response=True)
        assert theirs, f"aiohttp refuses {what!r}, which the poll client takes"
        final = [(m, b) for m, b in theirs if m.code >= 200]  # type: ignore[attr-defined]
        assert (final[0][0].code, final[0][1]) == polled, what  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", CHUNK_SIZES)
def test_chunk_sizes_are_judged_as_llhttp_judges_them(size):
    stream = size + b"\r\nhello\r\n0\r\n\r\n"
    reference = llhttp_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + stream, close=False)
    body = Chunked(1 << 20)
    try:
        ours: bytes | None = body.decoded() if body.feed(stream) < 0 else None
    except ChunkError:
        ours = None
    assert ours == (reference[1] if reference else None)
    if size in (b"-5", b"-6", b"+5", b"0x5", b"5_0", b" 5"):  # what int(x, 16) or a lax reader would take
        assert ours is None
