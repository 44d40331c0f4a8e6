"""Connecting to the state database: the URL checked, the password from a file or libpq's usual
places (never from the URL, never in a log line), sessions that cannot sit idle in a transaction,
and a start that waits for a database that is not up yet."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.tracking.store import StateError

log = logging.getLogger("distribute.state")

# A session left "idle in transaction" (a replica stopped between statements) holds its row locks
# until the server ends it: a claimed job must not stay locked for longer than this.
IDLE_IN_TRANSACTION_MS = 30_000
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0  # a replica's statements: one stuck longer is a database in trouble
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


class StateDatabaseError(StateError):
    """A state database that cannot be used as configured (one line, no password)."""


def check_url(url: str) -> None:
    """Refuse a URL that is not postgresql:// or that carries a password (one line)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StateDatabaseError(f"state.url: {parts.scheme or '(none)'}:// is not postgresql://")
    if parts.password is not None:
        raise StateDatabaseError("state.url: a password in the URL is refused; put it in "
                                 "state.password_file or PGPASSWORD / PGPASSFILE")


def where(url: str) -> str:
    """host:port/dbname of `url`, for log lines (no user, no password, no query)."""
    parts = urlsplit(url)
    host = parts.hostname or "(PGHOST or local socket)"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or ''}"


def read_password(password_file: str | None) -> str | None:
    """The password from `password_file` (its first line), or None for libpq's PGPASSWORD/PGPASSFILE."""
    if not password_file:
        return None
    try:
        text = Path(password_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise StateDatabaseError(f"state.password_file {password_file}: cannot read it ({exc.strerror})") from None
    return text.splitlines()[0] if text else ""


async def create_pool(url: str, password_file: str | None = None, max_size: int = 10,
                      password: str | None = None, relaxed: bool = False,
                      command_timeout: float | None = COMMAND_TIMEOUT) -> Any:
    """One pool of sessions to the state database (raises what asyncpg raises when it is down).
    `password` (state.password_file, read at config load) or `password_file`, else libpq's
    PGPASSWORD / PGPASSFILE, which asyncpg reads itself. `relaxed` sessions commit without waiting
    for the WAL's flush (synchronous_commit off): only for writes a crash may lose harmlessly.
    `command_timeout` bounds each statement (None: no bound, for `state export`'s copy of a whole
    file, which may rightly take minutes)."""
    import asyncpg  # the optional `postgres` extra: only a replica configured with state.url needs it

    check_url(url)
    return await asyncpg.create_pool(
        dsn=url, password=password if password is not None else read_password(password_file),
        min_size=1, max_size=max_size, reset=_keep_session,
        timeout=CONNECT_TIMEOUT, command_timeout=command_timeout,
        server_settings={"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
                         "application_name": "distribute-exporter",
                         **({"synchronous_commit": "off"} if relaxed else {})})


async def _keep_session(conn: Any) -> None:
    """A session goes back to the pool as it is. asyncpg's default reset sends `RESET ALL`,
    `UNLISTEN *` and friends on every release: one more round trip that each statement through the
    pool waits for (a proxied create's answer among them). The exporter leaves no session state to
    reset: no LISTEN, no SET, no session advisory lock (the migration's is transaction-scoped), no
    cursor or temporary table outliving its transaction; asyncpg still rolls back a transaction left
    open before calling this."""


async def create_pool_waiting(url: str, password_file: str | None = None, max_size: int = 10,
                              password: str | None = None) -> Any:
    """`create_pool`, retried with back-off while the database cannot be reached: one log line when
    it cannot (naming the host, never the password), one when it can again."""
    delay, failed = BACKOFF_FIRST, False
    while True:
        try:
            pool = await create_pool(url, password_file, max_size, password)
        except StateDatabaseError:
            raise
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            reason = type(exc).__name__
        except Exception as exc:  # asyncpg's own: the server is starting, shutting down, refusing
            if _is_permanent(exc):
                raise StateDatabaseError(f"state database {where(url)}: {_one_line(exc)}") from None
            reason = type(exc).__name__
        else:
            if failed:
                log.info("state database %s reachable; starting", where(url))
            return pool
        if not failed:
            log.warning("state database %s not reachable (%s); not ready, retrying with back-off",
                        where(url), reason)
            failed = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


def _is_permanent(exc: Exception) -> bool:
    """Errors that waiting does not cure: a wrong password, an unknown database or role."""
    name = type(exc).__name__
    return name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError",
                    "InvalidCatalogNameError", "ClientConfigurationError")


def _one_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
