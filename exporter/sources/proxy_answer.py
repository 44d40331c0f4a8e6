"""The API's answer to one request on the proxy's fast path (proxy_fast.py): its head read by llhttp,
its body framed as it comes and passed to the application byte for byte, or held whole while a
create's id is stored."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import httptools

from exporter.sources.proxy_upstream import Upstream
from exporter.sources.proxy_wire import MAX_HEAD, Answer, AnswerHead, BadAnswer, BoundedCopy, answer_of


class _Stop(Exception):
    """Raised in a callback to end llhttp's parse: bytes after the end of a chunked body."""


class ChunkError(ValueError):
    """A chunked body that is not, or bytes after its end."""


_PRIMER = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class Chunked:
    """A chunked body read by llhttp as its bytes come (they are forwarded as they are): where it
    ends, and its data decoded while `keep` allows (for the hooks). Its parser is primed with a
    minimal head, so that it starts in the body. The parser refers back to it (the callbacks): it
    is let go once the body ended or broke, so that the pair is freed at once, not by the cyclic GC."""

    __slots__ = ("parser", "data", "ended", "crlf_run")

    def __init__(self, keep: int) -> None:
        self.data = BoundedCopy(keep)
        self.ended = False
        self.crlf_run = 0  # CR and LF bytes at the end of what came so far
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.parser.feed_data(_PRIMER)

    def on_body(self, body: bytes) -> None:
        self.data.add(body)

    def on_message_complete(self) -> None:
        self.ended = True

    def on_message_begin(self) -> None:
        if self.ended:
            raise _Stop()  # something after the body

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` belong to the body: all of them (len) while it goes on, fewer
        at its end (-1 - used: the body ended after `used` bytes). ChunkError when it is broken or
        other bytes than line ends follow it."""
        if self.ended or self.parser is None:
            raise ChunkError("bytes after the end of a chunked body")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.parser = None
            raise ChunkError("bytes after the end of a chunked body" if self.ended else str(exc)) from None
        if self.ended:
            self.parser = None
        run = len(data) - len(data.rstrip(b"\r\n"))
        self.crlf_run = self.crlf_run + run if run == len(data) else run
        if not self.ended:
            return len(data)
        # The body ends with a CRLF CRLF after a byte that is neither; llhttp skips any further line
        # ends silently: they are not the application's.
        return -1 - (len(data) - max(self.crlf_run - 4, 0))

    def decoded(self) -> bytes | None:
        return self.data.value()


class Receiver(Protocol):
    """Where the answer goes: the application's connection (proxy_fast.Client)."""

    def write(self, data: bytes) -> None: ...


class Exchange:
    """One request's answer as it comes from the API: parsed just enough to find its end, passed to
    the application as it comes, or held whole while a create's id is stored."""

    def __init__(self, client: Receiver, upstream: Upstream, method: bytes, hold: bool, keep: int,
                 hold_max: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.client, self.upstream, self.method = client, upstream, method
        self.hold_max = hold_max  # a create's answer longer than this is streamed on
        self.hold, self.keep = hold, keep
        self.buffer = bytearray()
        self.reader = AnswerHead()
        self.answer: Answer | None = None
        loop = loop or asyncio.get_running_loop()
        self.headed: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.left = 0  # "length": body bytes still to come
        self.chunked: Chunked | None = None
        self.held: list[bytes] | None = None
        self.held_size = 0
        self.kept: BoundedCopy | None = None
        self.last_data = time.monotonic()
        self.got_bytes = False
        self.reusable = False
        self.broken = False
        self.unsent = b""  # the head, until the rest of its read goes with it

    def from_api(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        self.got_bytes = True
        if self.answer is None:
            data = self._head(data)
            if self.answer is None:
                return
            # The head and the body's first bytes (most answers come whole in one read) go back in
            # one write: a send on loopback costs more than the rest of the forwarding.
            try:
                if data:
                    self._rest(data)
            finally:
                if self.unsent:
                    self._send(b"")
            return
        self._rest(data)

    def _rest(self, data: bytes) -> None:
        if self.done.done():
            self._spoiled()  # bytes after the end of the answer
            return
        self._body(data)

    def _head(self, data: bytes) -> bytes:
        """Feed llhttp the head's bytes (each once); the body's first bytes once the head is whole."""
        buffer: bytes | bytearray = data  # most heads come whole in one read: not copied to the buffer
        if self.buffer:
            self.buffer += data
            buffer = self.buffer
        try:
            end = self.reader.take(buffer)
        except BadAnswer:
            self._fail_upstream()
            return b""
        if end < 0 or end > MAX_HEAD:
            if len(buffer) > MAX_HEAD:
                self._fail_upstream()
            elif buffer is data:
                self.buffer += data
            return b""
        rest = bytes(buffer[end:])
        self.buffer.clear()
        answer = answer_of(self.reader, self.method)
        self.answer = answer
        self.headed.set_result(None)
        if answer.status != 200:
            self.hold, self.keep = False, 0
        self.held = [] if self.hold else None
        self.kept = BoundedCopy(self.keep) if self.keep and answer.framing in ("length", "close") else None
        self.left = answer.length
        if answer.framing == "chunked":
            self.chunked = Chunked(self.keep)
        if self.held is None:
            self.unsent = answer.head
        else:
            self._out(answer.head)
        if answer.framing == "none" or answer.framing == "length" and not self.left:
            self._end(answer.reusable)  # nothing more to come: the next read may never happen
        return rest

    def _body(self, data: bytes) -> None:
        answer = self.answer
        assert answer is not None
        if answer.framing == "length":
            extra = len(data) > self.left
            if extra:
                data = data[:self.left]
            self.left -= len(data)
            if self.kept is not None:
                self.kept.add(data)
            self._out(data)
            if not self.left:
                self._end(answer.reusable)
            if extra:
                self._spoiled()  # more than announced
        elif answer.framing == "chunked":
            assert self.chunked is not None
            try:
                used = self.chunked.feed(data)
            except ChunkError:
                self._fail_upstream()
                return
            if used < 0:
                used = -1 - used
                self._out(data[:used])
                self._end(answer.reusable and used == len(data))
                return
            self._out(data)
        else:  # until the API closes
            if self.kept is not None:
                self.kept.add(data)
            self._out(data)

    def _out(self, data: bytes) -> None:
        if not data:
            return
        if self.held is not None:
            self.held.append(data)
            self.held_size += len(data)
            if self.held_size <= self.hold_max:
                return
            data, self.held = b"".join(self.held), None  # too long for a create's answer: stream on
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self.unsent:
            data, self.unsent = self.unsent + data, b""
        self.client.write(data)

    def _end(self, reusable: bool) -> None:
        self.reusable = reusable
        if not self.done.done():
            self.done.set_result(None)

    def api_ended(self) -> None:
        if self.answer is not None and self.answer.framing == "close" and not self.done.done():
            self._end(False)
        elif not self.done.done():
            self._fail_upstream()

    def too_slow(self) -> None:
        if not self.headed.done():
            self.headed.set_exception(TimeoutError())

    def _spoiled(self) -> None:
        """The answer is whole but the connection is not one to use again."""
        self.reusable = False
        self.upstream.close()

    def _fail_upstream(self) -> None:
        self.broken = True
        self.upstream.close()
        if not self.headed.done():
            self.headed.set_exception(ConnectionError("the API broke off its answer"))
            self.headed.exception()
        if not self.done.done():
            self.done.set_result(None)

    def body(self) -> bytes | None:
        """The answer's body as the hooks read it (decoded from chunks), when kept whole."""
        if self.chunked is not None:
            return self.chunked.decoded()
        return self.kept.value() if self.kept is not None else None
