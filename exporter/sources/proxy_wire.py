"""HTTP/1.1 on the wire for the proxy's fast path (proxy_fast.py): request and answer heads read and
written as bytes, and the end of a chunked body found as it streams.

Only what this reader takes as plainly valid is taken: anything else (HTTP/1.0, a chunked or large
request body, `Expect`, `Upgrade`, obs-fold, a control character, a doubtful `Content-Length`) is
left to aiohttp's parser on the proxy's other path, which handles it as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

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

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[!-~]*|https?://[!-~]+) HTTP/1\.1")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")
# Request fields that send a request to the aiohttp path instead (their handling lives there).
_HAND_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_DROP_REQUEST = frozenset(n.encode() for n in HOP_BY_HOP) | {b"host", GROUP_HEADER.lower().encode()}
_DROP_ANSWER = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})  # never dropped as hop-by-hop
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


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


def _named(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Field names the Connection fields name (lower case): hop-by-hop too."""
    return {token.strip().lower() for name, value in fields if name.lower() == b"connection"
            for token in value.split(b",")}


def parse_request(head: bytes) -> tuple[Request, int] | None:
    """The request head (without its blank line) and its body length, or None when the fast path
    does not take it."""
    lines = head.split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return None
    fields: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    group = b""
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None  # obs-fold, a bare LF, a control character, no colon: aiohttp decides
        name, value = field.group(1), field.group(2)
        lower = name.lower()
        if lower in _HAND_OVER:
            return None
        if lower == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = value
        elif lower == b"x-distribute-group":
            group = value
        fields.append((name, value))
    size = int(length) if length is not None else 0
    named = _named(fields)
    if size > SMALL_BODY or named & _FRAMING:
        return None  # a framing field named hop-by-hop would be dropped while its body went on: aiohttp's
    target = first.group(2)
    if not target.startswith(b"/"):  # absolute form (RFC 9112 3.2.2): only its path and query are used
        parts = urlsplit(target.decode("latin-1"))
        target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    return Request(first.group(1), target.decode("latin-1"), fields, b"", group.decode("latin-1"), named), size


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


def parse_answer(head: bytes, method: bytes) -> Answer | None:
    """The API's answer head (without its blank line), or None when it is not valid HTTP/1.1."""
    lines = head.split(b"\r\n")
    first = _STATUS_LINE.fullmatch(lines[0])
    if first is None:
        return None
    status = int(first.group(1))
    fields: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    chunked: bool | None = None
    encoding = b"identity"
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field.group(1), field.group(2)
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit() or length not in (None, value):
                return None
            length = value
        elif lower == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif lower == b"content-encoding":
            encoding = value.strip().lower()
        fields.append((name, value))
    named = _named(fields) - _FRAMING  # the answer's own framing is passed on with its body
    reusable = b"close" not in named and (lines[0].startswith(b"HTTP/1.1") or b"keep-alive" in named)
    if method == b"HEAD" or status in (204, 304) or status < 200:
        framing = "none"
    elif chunked is not None:
        framing = "chunked" if chunked else "close"
    else:
        framing = "length" if length is not None else "close"
    out = [b"HTTP/1.1", lines[0][8:], b"\r\n"]
    for name, value in fields:
        lower = name.lower()
        if lower not in _DROP_ANSWER and lower not in named and not lower.startswith(b"proxy-"):
            out += (name, b": ", value, b"\r\n")
    if framing == "close":
        out.append(b"Connection: close\r\n")
        reusable = False
    out.append(b"\r\n")
    return Answer(status, b"".join(out), framing, int(length or 0), encoding.decode("latin-1"), reusable)


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


class ChunkError(ValueError):
    """A chunked body that is not."""


class Chunked:
    """Finds where a chunked body ends as its bytes come (they are forwarded as they are), and keeps
    its data decoded while `keep` allows (for the hooks)."""

    MAX_LINE = 8192

    def __init__(self, keep: int) -> None:
        self.state = "size"
        self.line = bytearray()
        self.left = 0  # data bytes still to come in this chunk, then 2 for its CRLF
        self.data = BoundedCopy(keep)

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` belong to the body: all of them (len) while it goes on, fewer
        at its end (-1 - used: the body ended after `used` bytes)."""
        pos, end = 0, len(data)
        while pos < end:
            if self.state == "data":
                take = min(self.left, end - pos)
                self.data.add(data[pos:pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.state, self.left = "crlf", 2
            elif self.state == "crlf":
                take = min(self.left, end - pos)
                if data[pos:pos + take] != b"\r\n"[2 - self.left:2 - self.left + take]:
                    raise ChunkError("no CRLF after a chunk")
                pos += take
                self.left -= take
                if not self.left:
                    self.state = "size"
            else:  # "size" or "trailer": a line
                cut = data.find(b"\n", pos)
                stop = end if cut < 0 else cut + 1
                self.line += data[pos:stop]
                pos = stop
                if len(self.line) > self.MAX_LINE:
                    raise ChunkError("chunk line too long")
                if cut >= 0 and self._line_done(bytes(self.line)):
                    return -1 - pos
        return end

    def _line_done(self, line: bytes) -> bool:
        self.line.clear()
        if not line.endswith(b"\r\n"):
            raise ChunkError("bare LF in a chunked body")
        if self.state == "trailer":
            return line == b"\r\n"
        size = line[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):
            raise ChunkError("bad chunk size")
        self.left = int(size, 16)
        self.state = "data" if self.left else "trailer"
        return False

    def decoded(self) -> bytes | None:
        return self.data.value()
