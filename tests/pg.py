"""A real PostgreSQL for the tests: Debian's server binaries, a cluster initialised as the postgres
user in a temporary directory, listening on a free loopback port, stopped and removed at the end.
Each test gets a database of its own."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port, wait_for

PASSWORD = "pg-test-secret-7c1"  # the superuser's; tests pass it by file, never in a URL


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are not installed: run the README's test command, "
                           "which installs Debian's postgresql")
    return Path(found[-1]).parent


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.password_file = self.dir / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self._names = itertools.count(1)
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        os.chmod(self.password_file, 0o644)
        self._as_postgres(self.bin / "initdb", "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
                          "--auth-local=trust", f"--pwfile={self.password_file}", "--no-sync")
        self.start()

    def _as_postgres(self, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*cmd, *map(str, args)], check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c max_connections=200")
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._as_postgres(self.bin / "psql", "-h", self.dir, "-p", self.port, "-d", db, "-At",
                                 "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        name = f"t{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def is_up(self) -> bool:
        return self._as_postgres(self.bin / "pg_isready", "-h", "127.0.0.1", "-p", self.port, check=False).returncode == 0

    def wait_up(self) -> None:
        wait_for(self.is_up, timeout=60, what="PostgreSQL accepting connections")
