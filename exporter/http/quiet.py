"""aiohttp's connection handler for the exporter's web listener (/metrics, the status page, the
reload route...), minus what could leak a request: aiohttp's own answer to a request its parser
refuses echoes the offending line (an `Authorization` value among them), and its server logger
writes it with a traceback. Here such a request gets a fixed 400 (or the status aiohttp chose) that
echoes nothing, and is summarised in the log at most once a minute: how many, and the names of the
parser's errors, never a byte of what was sent. Failures of the exporter's own routes (500) are
answered and logged as aiohttp does."""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from exporter.logs import Refusals

log = logging.getLogger("distribute.web")
REFUSALS = Refusals(log, "web")


def _fixed_answer(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Bad Request"
    return f"{status} {phrase}\n".encode()


class QuietRequestHandler(RequestHandler):
    """A request aiohttp's parser refuses gets a fixed answer and a summarised log line."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # an answer is under way: only a cut connection can tell
            raise ConnectionError("an answer was under way")
        REFUSALS.add(type(exc).__name__ if exc is not None else "malformed request")
        response = web.Response(status=status, body=_fixed_answer(status), content_type="text/plain")
        response.force_close()
        return response


class QuietServer(web.Server):
    """aiohttp's low-level server whose connections get QuietRequestHandler."""

    def __call__(self) -> RequestHandler:
        # web.Server.__call__ builds a RequestHandler from these same (private) attributes.
        return QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    """web.AppRunner whose server hands its connections to QuietRequestHandler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application started and its server built as aiohttp does
        server.__class__ = QuietServer  # only the handler each connection gets differs
        return server
