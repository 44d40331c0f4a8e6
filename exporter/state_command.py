"""`distribute-exporter state ...`: work on stored state outside a running exporter.

    distribute-exporter state export --to postgresql://user@host:5432/db [--password-file PATH] FILE...

copies SQLite state files into PostgreSQL (tracking/pg/export.py). One line per file on stdout; a
problem is one line on stderr and exit status 1; the password never appears in either.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from exporter.tracking.store import StateError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distribute-exporter state",
                                     description="Work on stored state outside a running exporter.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="copy SQLite state files into a PostgreSQL state database")
    export.add_argument("--to", required=True, metavar="URL",
                        help="the PostgreSQL database, postgresql://user@host:port/dbname (no password)")
    export.add_argument("--password-file", default=None, metavar="PATH",
                        help="the database password's file (else PGPASSWORD or PGPASSFILE)")
    export.add_argument("files", nargs="+", metavar="FILE", help="SQLite state files (state.path of each replica)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_export(args.to, args.password_file, args.files))
    except StateError as exc:
        print(f"state export: {exc}", file=sys.stderr)
        return 1


async def _export(url: str, password_file: str | None, files: list[str]) -> int:
    from exporter.tracking.pg.connect import StateDatabaseError, create_pool, where
    from exporter.tracking.pg.export import export_file
    from exporter.tracking.pg.schema import SchemaError
    from exporter.tracking.pg.store import PgJobStore

    try:
        pool = await create_pool(url, password_file, max_size=2, command_timeout=None)
    except (StateDatabaseError, SchemaError) as exc:
        raise StateError(str(exc)) from None
    except Exception as exc:  # unreachable, refused: asyncpg's and the OS's errors, named in one line
        raise StateError(f"state database {where(url)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        store = PgJobStore(pool, ())
        try:
            await store.migrate()
        except SchemaError as exc:
            raise StateError(str(exc)) from None
        for path in files:
            print((await export_file(store, path)).line(), flush=True)
    finally:
        await pool.close()
    return 0
