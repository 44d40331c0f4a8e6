"""HTTP/1.1 on the wire for the proxy's fast path (proxy_fast.py): request and answer heads read and
written as bytes (chunked answer bodies are read in proxy_answer.py).

Every head is parsed by llhttp (`httptools`, the parser aiohttp's own C parser is built on),
incrementally: a head is parsed once however its packets come. What llhttp refuses
(obs-fold, a bare LF or CR, a control character, a space before a colon, two Content-Lengths,
Transfer-Encoding with Content-Length...) is answered 400 here without echoing a byte of it. On top
of llhttp sits the proxy's policy: HTTP/1.0, a chunked or large request body, `Expect` and
`Upgrade` are left to aiohttp's server on the proxy's other path; heads have a length and a field
count limit; an answer never goes back with both framing fields.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

GROUP_HEADER = "X-Distribute-Group"
# RFC 9110 7.6.1: hop-by-hop fields, never forwarded (plus those the Connection field names, and
# Expect: the listener has answered any 100-continue itself). Host is set from the upstream's URL.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                        "proxy-connection", "proxy-authenticate", "proxy-authorization", "expect"})
SMALL_BODY = 64 * 1024  # bodies up to this size (announced by Content-Length) are read whole and sent in one piece
OBSERVED_PATH = re.compile(r"^/async/(chat|images|speech)/(create|result)$")
MAX_HEAD = 64 * 1024  # a request or answer head longer than this is not taken here
UPSTREAM_IDLE_SECONDS = 15.0  # a pooled connection idle longer is not reused (the API may have closed it)
POOL_IDLE_MAX = 1024
CLIENT_IDLE_SECONDS = 75.0  # a keep-alive connection from an application with no request this long is closed

MAX_FIELDS = 100  # header fields of one request or answer: past it, 431 (a request) or 502 (an answer)
# Request fields that send a request to the aiohttp path instead (their handling lives there).
_HAND_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_DROP_REQUEST = frozenset(n.encode() for n in HOP_BY_HOP) | {b"host", GROUP_HEADER.lower().encode()}
_DROP_ANSWER = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te"})
# The answer fields the policy reads or drops, found in the head's bytes by one search: llhttp has
# refused any head whose lines are not `name:value` between CRLFs (no space before the colon).
_ANSWER_FIELDS = re.compile(rb"\r\n(content-length|transfer-encoding|content-encoding|connection|keep-alive|upgrade|te"
                            rb"|proxy-[^:]*):[ \t]*([^\r]*)", re.IGNORECASE)
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})  # never dropped as hop-by-hop
_TARGET = re.compile(rb"/[!-~]*|https?://[!-~]+")


@dataclass(slots=True)
class Request:
    method: bytes
    path: str  # path and query as the application sent them (origin form)
    fields: list[tuple[bytes, bytes]]
    body: bytes
    group: str
    named: set[bytes]  # field names the Connection fields name (lower case): hop-by-hop too

    @property
    def traceparent(self) -> str | None:
        """The application's W3C trace context, if it sent one (a create's becomes a span link)."""
        return next((v.decode("latin-1") for n, v in self.fields if n.lower() == b"traceparent"), None)

    @property
    def close(self) -> bool:
        """The application asked to close the connection after this answer."""
        return b"close" in self.named


def _named(values: list[bytes]) -> set[bytes]:
    """Field names the Connection fields' `values` name (lower case): hop-by-hop too."""
    return {token.strip().lower() for value in values for token in value.split(b",")} if values else set()


class BadRequest(ValueError):
    """A request head llhttp refuses, or one too big to read: answered with `status`, never echoed.
    The message is llhttp's own wording (never the request's bytes)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _after_line_ends(buffer: bytes | bytearray, at: int) -> int:
    """The first byte at or after `at` that is not a CR or LF (line ends llhttp skips before a head)."""
    while at < len(buffer) and buffer[at] in b"\r\n":
        at += 1
    return at


class RequestHead:
    """The request heads of one connection as llhttp reads them, fed as their bytes come, each byte
    once and never past a head's blank line (the body is framed here, then passed to llhttp by
    `finish`, so that one parser serves the connection's requests one after the other; stopping
    llhttp with an exception would cost more than the parse)."""

    __slots__ = ("parser", "target", "fields", "done", "error", "fed", "begin", "http11")

    def __init__(self, start: int = 0) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.reset(start)

    def reset(self, start: int) -> None:
        """Ready for the next request, whose head starts at `start` of the buffer."""
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False
        self.error: BadRequest | None = None
        self.fed = self.begin = start  # bytes of the buffer read; where the head begins (past line ends)
        self.http11 = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.rstrip(b" \t")))  # llhttp keeps trailing whitespace: not the value's
        if len(self.fields) > MAX_FIELDS:
            self.error = BadRequest("too many header fields", 431)
            raise self.error

    def on_headers_complete(self) -> None:
        self.done = True

    def take(self, buffer: bytearray) -> int:
        """Read what came of the head in `buffer`: where its body starts once it is whole, else -1;
        BadRequest when llhttp refuses it."""
        fed = self.fed
        # The blank line may have begun in an earlier read: search from 3 bytes back, not before the head.
        # (llhttp refuses a bare CR or LF in a head, so the first CRLF CRLF is its end.)
        end = buffer.find(b"\r\n\r\n", fed - 3 if fed - 3 > self.begin else self.begin)
        if end >= 0:
            end += 4
        self.fed = end if end >= 0 else len(buffer)
        try:
            # Only the bytes not fed yet are copied (each byte once); a memoryview costs more per head.
            self.parser.feed_data(buffer[fed:self.fed])
        except httptools.HttpParserUpgrade:
            pass  # Upgrade or CONNECT: a whole head, which the policy hands to aiohttp
        except httptools.HttpParserError as exc:
            raise self.error or BadRequest(str(exc) or "malformed request head") from None
        if end >= 0:
            if not self.done:
                raise BadRequest("malformed request head")
            line = buffer.find(b"\r\n", _after_line_ends(buffer, self.begin))  # llhttp checked the request line
            self.http11 = buffer[line - 8:line] == b"HTTP/1.1"
        return end

    def finish(self, body: bytes) -> None:
        """The request's body (its Content-Length), for llhttp to be ready for the next request."""
        if body:
            self.parser.feed_data(body)


def take_request(head: RequestHead) -> tuple[Request, int] | None:
    """The fast path's policy on a whole head llhttp accepted: the request and its body length, or
    None when the aiohttp path takes it (HTTP/1.0, a streamed or large body, Expect, Upgrade, a
    framing field named by Connection, a target in neither origin nor absolute form)."""
    if not head.http11 or not _TARGET.fullmatch(head.target):
        return None
    length: bytes | None = None
    group = b""
    hosts = 0
    connection: list[bytes] = []
    for name, value in head.fields:
        lower = name.lower()
        if lower in _HAND_OVER:
            return None
        if lower == b"host":
            hosts += 1
        elif lower == b"connection":
            connection.append(value)
        elif lower == b"content-length":
            length = value  # llhttp let only one through, digits only
        elif lower == b"x-distribute-group":
            group = value
    size = int(length) if length is not None else 0
    named = _named(connection)
    if size > SMALL_BODY or named & _FRAMING:
        return None  # a framing field named hop-by-hop would be dropped while its body went on: aiohttp's
    if hosts != 1:  # RFC 9112 3.2: exactly one Host in an HTTP/1.1 request (aiohttp's parser agrees)
        raise BadRequest("no Host or more than one")
    target = head.target
    if not target.startswith(b"/"):  # absolute form (RFC 9112 3.2.2): only its path and query are used
        try:
            parts = urlsplit(target.decode("latin-1"))
            parts.port  # noqa: B018 (raises on a port that is not one)
        except ValueError:
            raise BadRequest("unparseable absolute-form target") from None
        target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    method = head.parser.get_method()
    return Request(method, target.decode("latin-1"), head.fields, b"", group.decode("latin-1"), named), size


def parse_request(head: bytes) -> tuple[Request, int] | None:
    """A whole request head (without its blank line) read at once: for tests and benchmarks."""
    reader = RequestHead()
    if reader.take(bytearray(head + b"\r\n\r\n")) < 0:
        raise BadRequest("incomplete request head")
    return take_request(reader)


def upstream_head(request: Request, host: bytes, prefix: bytes) -> bytes:
    """The request head sent to the API: the application's fields minus the hop-by-hop ones and the
    group header, the API's Host, and a Via."""
    drop = _DROP_REQUEST | request.named if request.named else _DROP_REQUEST
    out = [request.method, b" ", prefix, request.path.encode("latin-1"), b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in request.fields:
        lower = name.lower()
        if lower not in drop and not lower.startswith(b"proxy-"):
            out += (name, b": ", value, b"\r\n")
    out.append(b"Via: 1.1 distribute-exporter\r\n\r\n")
    return b"".join(out)


def failure(status: int, reason: str, message: str) -> bytes:
    """A whole answer of the proxy's own: `{"message": ...}` as JSON."""
    body = json.dumps({"message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


@dataclass(slots=True)
class Answer:
    status: int
    head: bytes  # the head as the application gets it (blank line included)
    framing: str  # "length", "chunked", "close" (until the API closes) or "none"
    length: int
    encoding: str  # Content-Encoding, lower case ("identity" when none)
    reusable: bool  # the API keeps the connection open after this answer


class BadAnswer(ValueError):
    """An answer head llhttp refuses (or a 101, or one too big): the API's answer is not passed on."""


class AnswerHead:
    """The API's answer head as llhttp reads it, fed as its bytes come, each byte once and never past
    the final head's blank line: interim answers (1xx) are read past. llhttp judges every byte; the
    final head's fields are then read from its bytes in one pass (`answer_of`): llhttp has refused any
    head whose lines are not exactly `name: value` between CRLFs, and a callback per field costs more
    than the split. Its parser refers back to it (the callback): once the final head is read, or
    refused, the parser is let go, so that the pair is freed at once rather than left, one per answer,
    to Python's cyclic garbage collector."""

    __slots__ = ("parser", "raw", "heads", "done", "error", "fed", "start", "status")

    def __init__(self) -> None:
        self.raw = b""  # the final head's bytes: its status line and fields, without the blank line
        self.heads = 0
        self.done = False
        self.error: BadAnswer | None = None
        self.fed = self.start = 0
        self.status = 0  # the latest head's
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.heads += 1
        assert self.parser is not None
        status = self.status = self.parser.get_status_code()
        if status == 101:
            self.error = BadAnswer("an upgrade (101) instead of an answer")
            raise self.error
        if status >= 200:  # an interim answer (100, 103) is not passed on: the final one follows
            self.done = True

    def take(self, buffer: bytes | bytearray) -> int:
        """Read what came of the heads in `buffer`: where the body starts once the final head is
        whole, else -1; BadAnswer when llhttp refuses it."""
        while True:
            fed = self.fed
            end = buffer.find(b"\r\n\r\n", fed - 3 if fed - 3 > self.start else self.start)  # past the blank line; -1 while it has not all come
            if end >= 0:
                end += 4
            stop = end if end >= 0 else len(buffer)
            heads = self.heads
            assert self.parser is not None
            try:
                self.parser.feed_data(buffer[fed:stop])  # the bytes not fed yet (each byte once)
            except httptools.HttpParserUpgrade:
                self.parser = None
                raise BadAnswer("an upgrade instead of an answer") from None
            except httptools.HttpParserError as exc:
                self.parser = None
                raise self.error or BadAnswer(str(exc) or "malformed answer head") from None
            self.fed = stop
            if end < 0:
                return -1
            if self.heads == heads:
                self.parser = None
                raise BadAnswer("malformed answer head")
            if self.done:
                self.parser = None  # the head is all it reads
                self.raw = bytes(buffer[_after_line_ends(buffer, self.start):end - 4])
                if self.raw.count(b"\r\n") > MAX_FIELDS:
                    raise BadAnswer("too many header fields")
                return end
            self.start = _after_line_ends(buffer, end)  # an interim head: the next one follows


def answer_of(head: AnswerHead, method: bytes) -> Answer:
    """The proxy's policy on the final answer head llhttp accepted: how its body is framed, whether
    the connection may be reused, and the head the application gets: its field lines as they came,
    minus the hop-by-hop ones, and minus Content-Length when Transfer-Encoding is there (RFC 9112 6.3).
    One search finds the few fields this reads or drops; the others are passed on in one slice."""
    raw = head.raw
    length: bytes | None = None
    codings: list[bytes] = []
    connection: list[bytes] = []
    encoding = b"identity"
    cuts: list[tuple[int, int]] = []  # the hop-by-hop lines (from their CRLF before, to their end)
    lengths: list[tuple[int, int]] = []
    for match in _ANSWER_FIELDS.finditer(raw):
        lower = match[1].lower()
        value = match[2].rstrip(b" \t")
        if lower == b"content-length":
            length = value
            lengths.append(match.span())
        elif lower == b"transfer-encoding":
            codings += [token.strip().lower() for token in value.split(b",")]
        elif lower == b"content-encoding":
            encoding = value.strip().lower()
        else:
            if lower == b"connection":
                connection.append(value)
            cuts.append(match.span())
    named = _named(connection) - _FRAMING  # the answer's own framing is passed on with its body
    if codings:
        cuts += lengths
    extra = named - _DROP_ANSWER
    if extra:  # (rare) the fields the Connection field names are dropped too
        cuts += _lines_named(raw, extra)
    if len(cuts) > 1:
        cuts = sorted(set(cuts))
    reusable = b"close" not in named and (raw.startswith(b"HTTP/1.1") or b"keep-alive" in named)
    framing = _framing(head.status, method, codings, length)
    line = raw.find(b"\r\n")
    line = len(raw) if line < 0 else line
    out = [b"HTTP/1.1 %d " % head.status, raw[13:line]]  # llhttp checked the status line: "HTTP/d.d ddd"
    for start, end in cuts:
        out.append(raw[line:start])
        line = end
    out += (raw[line:], b"\r\nConnection: close\r\n\r\n" if framing == "close" else b"\r\n\r\n")
    return Answer(head.status, b"".join(out), framing, int(length or 0), encoding.decode("latin-1"),
                  reusable and framing != "close")


def _framing(status: int, method: bytes, codings: list[bytes], length: bytes | None) -> str:
    if method == b"HEAD" or status in (204, 304):
        return "none"
    if codings:  # chunked only when it is the last coding (as llhttp reads it); else until close
        return "chunked" if codings[-1] == b"chunked" else "close"
    return "length" if length is not None else "close"


def _lines_named(raw: bytes, named: set[bytes]) -> list[tuple[int, int]]:
    """The lines of the head `raw` whose field names `named` holds (from their CRLF before, to their end)."""
    spans: list[tuple[int, int]] = []
    at = raw.find(b"\r\n")
    while at >= 0:
        after = raw.find(b"\r\n", at + 2)
        if raw[at + 2:raw.index(b":", at + 2)].lower() in named:
            spans.append((at, len(raw) if after < 0 else after))
        at = after
    return spans


def parse_answer(head: bytes, method: bytes) -> Answer | None:
    """A whole answer head (without its blank line) read at once; None when llhttp refuses it. For
    tests: a lone interim head gives that interim answer."""
    reader = AnswerHead()
    try:
        if reader.take(bytearray(head + b"\r\n\r\n")) < 0 and reader.heads == 0:
            return None
    except BadAnswer:
        return None
    return answer_of(reader, method)


class BoundedCopy:
    """A copy of a body as it passes, kept while it stays within `limit` bytes (for the hooks)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] | None = [] if limit else None

    def add(self, piece: bytes) -> None:
        if self.parts is not None:
            self.size += len(piece)
            if self.size <= self.limit:
                self.parts.append(piece)
            else:
                self.parts = None  # too long to be read: the exporter's own poll covers the job

    def value(self) -> bytes | None:
        return b"".join(self.parts) if self.parts is not None else None
