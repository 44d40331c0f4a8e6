"""The Prometheus exporter-toolkit web config file: TLS, basic auth with bcrypt hashes, response
headers and a request rate limit, read and checked into a WebSecurity, and the TLS context it asks for.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


log = logging.getLogger("distribute.web")

CLIENT_AUTH = {
    # Python's ssl module verifies every certificate it asks for, so the two "any" policies of Go
    # need a CA here as well; without one they are refused at load time.
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
HEADERS = {"Content-Security-Policy": None, "X-Frame-Options": ("deny", "sameorigin"),
           "X-Content-Type-Options": ("nosniff",), "X-XSS-Protection": None, "Strict-Transport-Security": None}
TLS_KEYS = {"cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
            "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
            "curve_preferences"}
# The cipher and curve lists name Go's constants; OpenSSL's defaults apply instead (logged once).
TLS_IGNORED = {"cipher_suites", "prefer_server_cipher_suites", "curve_preferences"}


class WebConfigError(ValueError):
    """A web config file that cannot be used; the message names the key."""


@dataclass
class WebSecurity:
    """What one load of the web config file says."""

    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tls: dict[str, Any] | None = None
    rate_interval: float = 0.0
    rate_burst: int = 0
    warnings: list[str] = field(default_factory=list)


def load_web_config(path: Path) -> WebSecurity:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: must be a mapping")
    unknown = set(data) - {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
    if unknown:
        raise WebConfigError(f"{sorted(unknown)[0]}: unknown key")
    security = WebSecurity()
    security.users = _users(data.get("basic_auth_users") or {})
    security.headers = _headers((data.get("http_server_config") or {}))
    if data.get("tls_server_config"):
        security.tls = _tls(data["tls_server_config"], path.parent, security.warnings)
    _rate_limit(data.get("rate_limit") or {}, security)
    return security


def _users(users: Any) -> dict[str, bytes]:
    if not isinstance(users, dict):
        raise WebConfigError("basic_auth_users: must be a mapping of user name to bcrypt hash")
    out = {}
    for name, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{name}: not a bcrypt hash")
        out[str(name)] = hashed.encode()
    return out


def _headers(server: Any) -> dict[str, str]:
    if not isinstance(server, dict) or set(server) - {"http2", "headers"}:
        raise WebConfigError("http_server_config: only http2 and headers are known")
    headers = server.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError("http_server_config.headers: must be a mapping")
    for name, value in headers.items():
        if name not in HEADERS:
            raise WebConfigError(f"http_server_config.headers.{name}: not one of {', '.join(HEADERS)}")
        allowed = HEADERS[name]
        if allowed and str(value).lower() not in allowed:
            raise WebConfigError(f"http_server_config.headers.{name}: must be one of {', '.join(allowed)}")
    return {k: str(v) for k, v in headers.items() if v}


def _tls(tls: Any, base: Path, warnings: list[str]) -> dict[str, Any]:
    if not isinstance(tls, dict):
        raise WebConfigError("tls_server_config: must be a mapping")
    unknown = set(tls) - TLS_KEYS
    if unknown:
        raise WebConfigError(f"tls_server_config.{sorted(unknown)[0]}: unknown key")
    for key in sorted(TLS_IGNORED & set(tls)):
        warnings.append(f"tls_server_config.{key}: not applied (OpenSSL's defaults are used)")
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type: must be one of {', '.join(CLIENT_AUTH)}")
    for key in ("min_version", "max_version"):
        if key in tls and tls[key] not in TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: must be one of {', '.join(TLS_VERSIONS)}")
    resolved = dict(tls)
    for key in ("cert_file", "key_file", "client_ca_file"):
        if tls.get(key):
            resolved[key] = str(base / tls[key]) if not os.path.isabs(tls[key]) else tls[key]
    if not (resolved.get("cert_file") or resolved.get("cert")) or not (resolved.get("key_file") or resolved.get("key")):
        raise WebConfigError("tls_server_config: needs cert_file (or cert) and key_file (or key)")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE and not (resolved.get("client_ca_file") or resolved.get("client_ca")):
        raise WebConfigError(f"tls_server_config.client_ca_file: needed with client_auth_type {auth}")
    if resolved.get("key_file"):
        _warn_if_readable(Path(resolved["key_file"]), "tls_server_config.key_file", warnings)
    build_ssl_context(resolved)  # fail now, with the reason, rather than at the first handshake
    return resolved


def _warn_if_readable(path: Path, what: str, warnings: list[str]) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"{what}: {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it")


def _rate_limit(limit: Any, security: WebSecurity) -> None:
    if not isinstance(limit, dict):
        raise WebConfigError("rate_limit: must be a mapping")
    interval = limit.get("interval", 0)
    if isinstance(interval, str):
        interval = _duration(interval)
    if not isinstance(interval, (int, float)) or interval < 0:
        raise WebConfigError("rate_limit.interval: must be a duration such as 100ms")
    burst = limit.get("burst", 1)
    if not isinstance(burst, int) or burst < 0:
        raise WebConfigError("rate_limit.burst: must be a non-negative integer")
    security.rate_interval, security.rate_burst = float(interval), burst


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * units[suffix]
    raise WebConfigError(f"rate_limit.interval: not a duration: {text!r}")


def _pem_file(text: str) -> str:
    """Inline PEM (cert, key, client_ca) written to a private temporary file for the ssl module."""
    import tempfile

    handle, name = tempfile.mkstemp(prefix="distribute-tls-", suffix=".pem")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    return name


def build_ssl_context(tls: dict[str, Any], context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """An SSLContext for the server; with `context`, load the (new) certificates into it."""
    ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert = tls.get("cert_file") or _pem_file(tls["cert"])
    key = tls.get("key_file") or _pem_file(tls["key"])
    try:
        ctx.minimum_version = TLS_VERSIONS[tls.get("min_version", "TLS12")]
        ctx.maximum_version = TLS_VERSIONS[tls.get("max_version", "TLS13")]
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = CLIENT_AUTH[tls.get("client_auth_type", "NoClientCert")]
        ca = tls.get("client_ca_file") or (_pem_file(tls["client_ca"]) if tls.get("client_ca") else None)
        if ca:
            ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebConfigError(f"tls_server_config: cannot load the certificates: {exc}") from None
    finally:
        for created, name in ((not tls.get("cert_file"), cert), (not tls.get("key_file"), key)):
            if created:
                os.unlink(name)
    return ctx
