"""The Prometheus exporter-toolkit web config file: TLS, basic auth with bcrypt hashes, response
headers and a request rate limit, read and checked into a WebSecurity, with the decisions the
toolkit makes (docs/security.md has the table, key by key).
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.http import goyaml
from exporter.http.tlscontext import (CLIENT_AUTH, GO_CIPHERS, GO_CURVES, HTTP2_CIPHERS, NO_CLIENT_CERT,
                                      TLS_VERSIONS, build_ssl_context)

log = logging.getLogger("distribute.web")

__all__ = ["WebConfigError", "WebSecurity", "load_web_config", "build_ssl_context", "TLS_VERSIONS"]

_STRINGS = ["list", "str"]
TLS_SCHEMA = {"cert": "str", "key": "str", "client_ca": "str", "cert_file": "str", "key_file": "str",
              "client_auth_type": "str", "client_ca_file": "str", "cipher_suites": ["list", "enum"],
              "curve_preferences": ["list", "enum"], "min_version": "enum", "max_version": "enum",
              "prefer_server_cipher_suites": "bool", "client_allowed_sans": _STRINGS}
SCHEMA = {"tls_server_config": TLS_SCHEMA,
          "http_server_config": {"http2": "bool", "headers": ["map", "str"]},
          "rate_limit": {"burst": "int", "interval": "duration"},
          "basic_auth_users": ["map", "str"]}
# The only headers the toolkit lets a file set; a tuple is the exact (case-sensitive) values allowed.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None}
_PATHS = ("cert_file", "key_file", "client_ca_file")
_COST = re.compile(r"[+-]?[0-9]+")


class WebConfigError(ValueError):
    """A web config file that cannot be used; the message names the key."""


@dataclass
class WebSecurity:
    """What one load of the web config file says."""

    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash, as "$2b$"
    headers: dict[str, str] = field(default_factory=dict)
    tls: dict[str, Any] | None = None  # every tls_server_config key, paths made absolute; None: no TLS
    rate_interval: float = 0.0  # seconds between requests; 0 or below: no limit
    rate_burst: int = 0
    http2: bool = True
    warnings: list[str] = field(default_factory=list)
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def files(self) -> list[str]:
        """The certificate files in use, watched for changes as the web config file is."""
        return [self.tls[k] for k in _PATHS if self.tls and self.tls[k]]


def load_web_config(path: Path, starting: bool = True) -> WebSecurity:
    """Read and check the file. `starting`: also refuse what stops the toolkit's server at start
    (but passes `promtool check web-config`), i.e. cipher suites HTTP/2 cannot use."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not valid YAML (not UTF-8 text)") from None
    try:
        data = goyaml.load(text, SCHEMA)
    except goyaml.GoYAMLError as exc:
        raise WebConfigError(f"{path}: {exc}") from None
    security = WebSecurity()
    server = data.get("http_server_config", {})
    security.headers = _headers((server or {}).get("headers") or {})
    # A null http_server_config zeroes it, http2 included, as Go's decoder does.
    security.http2 = server is not None and server.get("http2", True)
    security.users = _users(data.get("basic_auth_users") or {})
    tls = _tls_fields(data.get("tls_server_config") or {}, path.parent)
    if _enabled(tls):
        security.tls = _check_tls(tls, security.warnings)
        security.context = _context(security.tls)
        if starting and security.http2:
            _check_http2(security.tls)
    _rate_limit(data.get("rate_limit") or {}, security)
    return security


def _headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if name not in HEADERS:
            raise WebConfigError(f"http_server_config.headers.{name}: this header cannot be set "
                                 f"(only {', '.join(HEADERS)})")
        allowed = HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(f"http_server_config.headers.{name}: must be one of {', '.join(allowed)} "
                                 f"(exactly), not {value!r}")
    return dict(headers)  # a blank value is sent blank, as the toolkit does


def _users(users: dict[str, str]) -> dict[str, bytes]:
    return {name: _bcrypt(name, hashed) for name, hashed in users.items()}


def _bcrypt(name: str, hashed: str) -> bytes:
    """Go's bcrypt.Cost check (the toolkit's), and the hash as "$2b$" for Python's bcrypt: Go reads
    every version letter the same way."""
    where = f"basic_auth_users.{name}"
    raw = hashed.encode()
    if len(raw) < 59:
        raise WebConfigError(f"{where}: not a bcrypt hash (too short)")
    if raw[0:1] != b"$" or raw[1] > ord("2"):
        raise WebConfigError(f"{where}: not a bcrypt hash (it must start with $2a$, $2b$ or $2y$)")
    start = 3 if raw[2:3] == b"$" else 4
    cost_text = raw[start:start + 2].decode(errors="replace")
    if not _COST.fullmatch(cost_text) or not 4 <= int(cost_text) <= 31:
        raise WebConfigError(f"{where}: not a bcrypt hash (the cost must be 04 to 31)")
    return b"$2b$%02d$" % int(cost_text) + raw[start + 3:]


def _tls_fields(tls: dict[str, Any], base: Path) -> dict[str, Any]:
    out = {key: tls.get(key) for key in TLS_SCHEMA}
    for key in ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file"):
        out[key] = out[key] or ""
    for key in _PATHS:  # relative to the web config file, as the toolkit's SetDirectory
        if out[key] and not os.path.isabs(out[key]):
            out[key] = os.path.normpath(base / out[key])
    out["min_version"] = out["min_version"] or "TLS12"
    out["max_version"] = out["max_version"] or "TLS13"
    out["prefer_server_cipher_suites"] = out["prefer_server_cipher_suites"] is not False  # Go ignores it
    _check_names(out)  # Go refuses unknown names while reading, TLS on or not
    return out


def _check_names(tls: dict[str, Any]) -> None:
    for key in ("min_version", "max_version"):
        if tls[key] not in TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: unknown TLS version {tls[key]!r} "
                                 f"(one of {', '.join(TLS_VERSIONS)})")
    for key, known in (("cipher_suites", GO_CIPHERS), ("curve_preferences", GO_CURVES)):
        for name in tls[key] or []:
            if name not in known:
                raise WebConfigError(f"tls_server_config.{key}: unknown name {name!r} (one of {', '.join(known)})")


def _enabled(tls: dict[str, Any]) -> bool:
    """TLS is on when any of these is set (the toolkit's IsEnabled); otherwise plain HTTP."""
    return any(tls[k] for k in ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
                                "client_ca_file"))


def _check_tls(tls: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    if not (tls["cert_file"] or tls["cert"]):
        raise WebConfigError("tls_server_config: missing one of cert or cert_file")
    if not (tls["key_file"] or tls["key"]):
        raise WebConfigError("tls_server_config: missing one of key or key_file")
    auth = tls["client_auth_type"]
    if auth not in CLIENT_AUTH and auth:
        raise WebConfigError(f"tls_server_config.client_auth_type: invalid {auth!r} (one of {', '.join(CLIENT_AUTH)})")
    has_ca = bool(tls["client_ca_file"] or tls["client_ca"])
    if has_ca and auth in NO_CLIENT_CERT:
        raise WebConfigError("tls_server_config.client_ca_file: client CAs are configured without a client auth "
                             "policy (set client_auth_type, e.g. RequireAndVerifyClientCert)")
    unverified = auth in ("RequireAnyClientCert", "RequireClientCert") or (
        auth == "RequestClientCert" and tls["client_allowed_sans"] is not None)
    if unverified and not has_ca:
        raise WebConfigError(f"tls_server_config.client_auth_type: {auth} reads client certificates without "
                             "verifying them, which Python's ssl cannot do: set client_ca_file (or client_ca) "
                             "to the CA that signs them, or use RequireAndVerifyClientCert")
    if TLS_VERSIONS[tls["min_version"]] > TLS_VERSIONS[tls["max_version"]]:
        warnings.append("tls_server_config: min_version is above max_version, so no TLS handshake can succeed")
    if len(tls["curve_preferences"] or []) > 1:
        warnings.append("tls_server_config.curve_preferences: Python's ssl can restrict to one curve only; "
                        "with several listed, OpenSSL's default curves are used")
    if tls["key_file"]:
        _warn_if_readable(Path(tls["key_file"]), "tls_server_config.key_file", warnings)
    return tls


def _context(tls: dict[str, Any]) -> ssl.SSLContext:
    """The context, built now so that a bad file fails at load with its reason, not at a handshake."""
    for key in _PATHS:
        try:
            if tls[key]:
                Path(tls[key]).read_bytes()
        except OSError as exc:
            raise WebConfigError(f"tls_server_config.{key}: cannot read {tls[key]}: {exc.strerror or exc}") from None
    try:
        return build_ssl_context(tls)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebConfigError(f"tls_server_config: cannot load the certificate and key: {exc}") from None


def _check_http2(tls: dict[str, Any]) -> None:
    """Go's HTTP/2 server refuses to start when cipher_suites allows TLS 1.2 but not an AES-128-GCM
    suite; the toolkit's exporters then stop at start, so this one does too."""
    chosen = tls["cipher_suites"]
    if chosen and TLS_VERSIONS[tls["min_version"]] < ssl.TLSVersion.TLSv1_3 and not HTTP2_CIPHERS & set(chosen):
        raise WebConfigError("tls_server_config.cipher_suites: HTTP/2 needs TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 "
                             "or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (or set http_server_config.http2: false)")


def _warn_if_readable(path: Path, what: str, warnings: list[str]) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"{what}: {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it")


def _rate_limit(limit: dict[str, Any], security: WebSecurity) -> None:
    """interval is a Go duration (a bare number counts nanoseconds); 0 means no limit and so does a
    negative one. burst defaults to 0, and a limit with burst 0 refuses every request: the toolkit's."""
    security.rate_interval = (limit.get("interval") or 0) / 1e9
    security.rate_burst = limit.get("burst") or 0
    if security.rate_interval > 0 and security.rate_burst < 1:
        security.warnings.append("rate_limit: burst is below 1, so every request is answered 429 (as the toolkit does)")
