"""What every HTTP transport of the API client shares: the raw answer, and the errors a transport
raises (the client's error hierarchy starts here; exporter.polling.client adds the rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol


class ApiError(Exception):
    """A result request that did not give a usable answer; `reason` is its error label."""

    reason = "error"


class ApiTimeout(ApiError):
    reason = "timeout"


class ApiConnectError(ApiError):
    reason = "connect"


class BadAnswer(ApiError):
    """An answer that is not valid HTTP/1.1 (as llhttp judges it): that request fails, its
    connection is closed."""

    reason = "protocol"


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


class BodyTooLarge(Exception):
    """Raised by a transport when an answer is longer than it may read."""


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> RawResponse:
        """Send one POST; raise ApiTimeout, ApiConnectError or BodyTooLarge."""

    async def close(self) -> None: ...
