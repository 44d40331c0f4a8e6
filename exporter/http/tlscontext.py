"""The server's TLS context from a checked `tls_server_config`, built to do what the exporter-toolkit's
Go `tls.Config` does wherever Python's ssl (OpenSSL) can; docs/security.md lists where it cannot.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import tempfile
import warnings
from typing import Any

log = logging.getLogger("distribute.web")

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's tls.CipherSuites() (the names the toolkit accepts) -> OpenSSL's name for TLS 1.0-1.2, listed in
# Go's own server preference order (Go ignores the order written in the file and
# prefer_server_cipher_suites). The TLS 1.3 suites cannot be chosen in Go either: None.
GO_CIPHERS: dict[str, str | None] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_AES_128_GCM_SHA256": None, "TLS_AES_256_GCM_SHA384": None, "TLS_CHACHA20_POLY1305_SHA256": None,
}
# What HTTP/2 needs in Go's net/http when cipher_suites is set and TLS 1.2 is allowed.
HTTP2_CIPHERS = {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}
GO_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
NO_CLIENT_CERT = ("", "NoClientCert")
CLIENT_AUTH = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
               "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_OP_PRIORITIZE_CHACHA = 1 << 21  # OpenSSL's SSL_OP_PRIORITIZE_CHACHA; Python 3.11 has no name for it
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)


def verify_mode(tls: dict[str, Any]) -> ssl.VerifyMode:
    """Go's client auth policy as OpenSSL's. OpenSSL verifies every certificate it asks for: the
    policies that ask without verifying become either "do not ask" (RequestClientCert, whose answer
    changes nothing unless client_allowed_sans reads it) or "ask and verify" (the rest)."""
    auth = tls["client_auth_type"]
    if auth in NO_CLIENT_CERT or (auth == "RequestClientCert" and tls["client_allowed_sans"] is None):
        return ssl.CERT_NONE
    if auth in ("RequestClientCert", "VerifyClientCertIfGiven"):
        return ssl.CERT_OPTIONAL
    return ssl.CERT_REQUIRED


def build_ssl_context(tls: dict[str, Any], context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """A new server context for `tls` (a checked tls_server_config); `context` is not reused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    low, high = TLS_VERSIONS[tls["min_version"]], TLS_VERSIONS[tls["max_version"]]
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in Python; the file asks for them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = low, high
    # Go's server: its own suite order, ChaCha20 first for a client that puts it first (Go reads that
    # as "no AES hardware"), never a renegotiation, and ALPN answered with HTTP/1.1 (no HTTP/2 here).
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | _OP_PRIORITIZE_CHACHA | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    _set_ciphers(ctx, tls, low)
    curves = tls["curve_preferences"] or []
    if len(curves) == 1:  # Python's ssl sets one curve, or leaves OpenSSL's list
        ctx.set_ecdh_curve(GO_CURVES[curves[0]])
    _load_key_pair(ctx, tls)
    mode = verify_mode(tls)
    ctx.verify_mode = mode
    if mode != ssl.CERT_NONE:
        cas = client_ca_text(tls)
        if cas is not None:
            load_client_cas(ctx, cas)
        else:  # as Go with no ClientCAs: the system's roots
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if tls["client_allowed_sans"] is not None:
            ctx.sslobject_class = _pinned(frozenset(tls["client_allowed_sans"]))
    return ctx


def _set_ciphers(ctx: ssl.SSLContext, tls: dict[str, Any], low: ssl.TLSVersion) -> None:
    chosen = tls["cipher_suites"] or [n for n, v in GO_CIPHERS.items() if v]  # Go's defaults
    names = [v for n, v in GO_CIPHERS.items() if v and n in chosen]
    if not names:  # only TLS 1.3 suites named: as in Go, no TLS 1.2 handshake can succeed
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    # OpenSSL 3 refuses TLS 1.0/1.1 handshakes above security level 0; Go serves them when asked to.
    ctx.set_ciphers(":".join(names) + (":@SECLEVEL=0" if low < ssl.TLSVersion.TLSv1_2 else ""))


def client_ca_text(tls: dict[str, Any]) -> str | None:
    """The client CAs' PEM text (client_ca_file wins over client_ca), or None when neither is set."""
    if tls["client_ca_file"]:
        with open(tls["client_ca_file"], encoding="utf-8", errors="replace") as handle:
            return handle.read()
    return tls["client_ca"] or None


def load_client_cas(ctx: ssl.SSLContext, pem: str) -> int:
    """Each certificate block that parses is trusted, the rest skipped, as Go's AppendCertsFromPEM;
    none at all leaves an empty pool (every presented certificate fails), not the system's roots."""
    loaded = 0
    for block in _PEM_CERT.findall(pem):
        try:
            ctx.load_verify_locations(cadata=block)
            loaded += 1
        except (ssl.SSLError, ValueError):
            continue
    return loaded


def _load_key_pair(ctx: ssl.SSLContext, tls: dict[str, Any]) -> None:
    created = []
    try:
        cert = tls["cert_file"] or _pem_file(tls["cert"], created)
        key = tls["key_file"] or _pem_file(tls["key"], created)
        # An encrypted key fails (Go cannot read one either) instead of OpenSSL prompting on a terminal.
        ctx.load_cert_chain(cert, key, password=_no_password)
    finally:
        for name in created:
            os.unlink(name)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted; the toolkit reads only unencrypted keys")


def _pem_file(text: str, created: list[str]) -> str:
    """Inline PEM written to a private temporary file for the ssl module, removed right after."""
    handle, name = tempfile.mkstemp(prefix="distribute-tls-", suffix=".pem")
    created.append(name)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    return name


def certificate_sans(cert: dict | None) -> set[str]:
    """The SAN values Go compares: DNS names, e-mail addresses, IP addresses as Go prints them, URIs."""
    names: set[str] = set()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            names.add(value)
        elif kind == "IP Address":
            address = ipaddress.ip_address(value.strip())
            mapped = getattr(address, "ipv4_mapped", None)
            names.add(str(mapped or address))
    return names


def _pinned(allowed: frozenset[str]) -> type[ssl.SSLObject]:
    """An SSLObject that ends the handshake unless the client's certificate carries an allowed SAN
    (Go's VerifyPeerCertificate; a client that sends none is refused too, as Go drops it)."""

    class Pinned(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            if not certificate_sans(self.getpeercert()) & allowed:
                log.debug("TLS handshake refused: client certificate has none of client_allowed_sans")
                raise ssl.SSLError(ssl.SSL_ERROR_SSL, "client certificate has none of client_allowed_sans")

    return Pinned


class LiveContext(ssl.SSLContext):
    """The listener's context: each new connection gets the context of the web config in force
    (`current`), as Go's GetConfigForClient, so re-read certificates and policies apply at once."""

    current: ssl.SSLContext

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.current.wrap_bio(incoming, outgoing, server_side, server_hostname, session)
