"""HOST:PORT listen addresses, as the command line and the config write them."""

from __future__ import annotations


class AddressError(ValueError):
    """A listen address that is not HOST:PORT."""


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split 'HOST:PORT' (or '[v6]:PORT', or ':PORT' for all interfaces) into host and port."""
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"not a HOST:PORT listen address: {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)
