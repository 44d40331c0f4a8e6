"""`state.url`: the form of a PostgreSQL URL (libpq's URI form), checked without connecting.

The check is about what libpq would read, so that `--config.check` catches a typo before a
deployment does: the scheme, a port that is a number, query parameters libpq knows, and no
password anywhere in the URL (it would show in process listings, logs and the status page).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("postgresql", "postgres")

# libpq's connection parameters (PostgreSQL 15-17 "Parameter Key Words"), less `password`, which
# comes from state.password_file, PGPASSWORD or PGPASSFILE only.
LIBPQ_PARAMETERS = frozenset("""
host hostaddr port dbname user passfile require_auth channel_binding connect_timeout client_encoding
options application_name fallback_application_name keepalives keepalives_idle keepalives_interval
keepalives_count tcp_user_timeout replication gssencmode sslmode requiressl sslcompression sslcert
sslkey sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer ssl_min_protocol_version
ssl_max_protocol_version krbsrvname gsslib gssdelegation service target_session_attrs load_balance_hosts
""".split())

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

PASSWORD_ADVICE = "put the password in state.password_file (or PGPASSWORD / PGPASSFILE)"


class StateUrlError(ValueError):
    """What is wrong with a state.url, in one line that never repeats a password."""


def check_state_url(url: str) -> None:
    """Raise StateUrlError unless `url` has the form postgresql://user@host:port/dbname?param=value."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise StateUrlError("must start with postgresql:// (libpq's URI form, e.g. "
                            "postgresql://exporter@db:5432/distribute)")
    if _has_password(parts.netloc):
        raise StateUrlError(f"must not hold a password (user:password@host); {PASSWORD_ADVICE}")
    for host_port in _hosts(parts.netloc):
        _check_port(host_port)
    if parts.fragment:
        raise StateUrlError("must not have a #fragment")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        _check_parameter(key, value)


def _has_password(netloc: str) -> bool:
    userinfo, at, _ = netloc.rpartition("@")
    return bool(at) and ":" in userinfo


def _hosts(netloc: str) -> list[str]:
    """Every host[:port] of the URL: libpq takes a comma-separated list of them."""
    return [h for h in netloc.rpartition("@")[2].split(",") if h]


def _check_port(host_port: str) -> None:
    port = host_port.rpartition("]")[2] if host_port.startswith("[") else host_port
    if ":" not in port:
        return
    number = port.rpartition(":")[2]
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise StateUrlError(f"port must be a number from 1 to 65535, not {number[:20]!r}")


def _check_parameter(key: str, value: str) -> None:
    if key == "password":
        raise StateUrlError(f"must not hold a password (?password=); {PASSWORD_ADVICE}")
    if key not in LIBPQ_PARAMETERS:
        raise StateUrlError(f"unknown query parameter {key[:40]!r} (libpq's connection parameters, such as "
                            "sslmode, connect_timeout, application_name)")
    if key == "sslmode" and value not in SSLMODES:
        raise StateUrlError(f"sslmode must be one of {', '.join(SSLMODES)}, not {value[:20]!r}")


def redacted(url: str) -> str:
    """host:port/dbname of `url` for log lines: no user, no query (a checked URL has no password)."""
    parts = urlsplit(url)
    return f"{parts.netloc.rpartition('@')[2] or '(local socket)'}{parts.path}"
