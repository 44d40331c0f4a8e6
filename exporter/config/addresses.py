"""HOST:PORT listen addresses, as the command line and the config write them."""

from __future__ import annotations

import socket


class AddressError(ValueError):
    """A listen address that is not HOST:PORT, or whose host does not resolve."""


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split 'HOST:PORT' (or '[v6]:PORT', or ':PORT' for all interfaces) into host and port."""
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"not a HOST:PORT listen address: {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def check_listen_address(text: str) -> tuple[str, int]:
    """parse_listen_address, and the host resolved as a bind would resolve it: the one check every
    listen address (flag or config) gets before anything starts, so that a typo is a line, not a
    half-started process."""
    host, port = parse_listen_address(text)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise AddressError(f"cannot resolve host {host!r} of {text!r}: {reason}") from None
    return host, port
