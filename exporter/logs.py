"""Log lines: logfmt (default) or JSON, one event per line, with every known secret masked."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Iterable

REDACTED = "<redacted>"


class SecretMask:
    """The secrets a log line must never show (the API key, the registration token)."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def set(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


MASK = SecretMask()


_QUOTED = re.compile(r"[<(\[{'\"\n:=]")
_PLACEHOLDER = re.compile(r"\s*%[-#0 +]*\d*(?:\.\d+)?[sdrifx]")


class LibraryFilter(logging.Filter):
    """Records of the HTTP and event-loop libraries (aiohttp, asyncio) can carry what a peer sent in
    their arguments or exception (aiohttp's parser quotes the offending request line, an
    `Authorization` value among them): only their fixed message and the exception's type are kept.
    The exporter's own records never hold a request's content in the first place."""

    PREFIXES = ("aiohttp", "asyncio")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.PREFIXES):
            exc = record.exc_info[1] if record.exc_info else None
            template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            # A message formatted before logging (asyncio's "Exception in callback <Handle ...>") may
            # quote objects: only the words before the first quoted thing are kept.
            template = _PLACEHOLDER.sub("", _QUOTED.split(template, 1)[0]).strip() or "event"
            record.msg = template + (f" ({type(exc).__name__})" if exc is not None else "")
            record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        return True


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        message = record.getMessage()
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        line = (f"ts={stamp} level={record.levelname.lower()} logger={record.name} "
                f"msg={_logfmt_value(message)}")
        return MASK(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return MASK(json.dumps(event, ensure_ascii=False))


class Refusals:
    """Malformed requests a listener refused, summarised in its log at most once a minute: how many
    and the parser's reasons (fixed words), never a byte of what was sent. One per listener (the web
    listener's and the proxy's), each naming itself in its line."""

    INTERVAL = 60.0

    def __init__(self, log: logging.Logger, listener: str) -> None:
        self.log, self.listener = log, listener
        self.count = 0
        self.reasons: dict[str, int] = {}
        self.logged = -self.INTERVAL

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < 8 or reason in self.reasons:  # a bounded line, whatever a scan sends
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged >= self.INTERVAL:
            self.logged = now
            summary = ", ".join(f"{r} ({n})" for r, n in sorted(self.reasons.items()))
            self.log.warning("%s: refused %d malformed request(s) since the last such line: %s",
                             self.listener, self.count, summary)
            self.count, self.reasons = 0, {}


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(LibraryFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
