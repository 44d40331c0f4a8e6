import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def simulator():
    from helpers import Simulator

    procs = []

    def start(*extra: str) -> Simulator:
        sim = Simulator(*extra)
        procs.append(sim)
        return sim

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def exporter():
    from helpers import ExporterProc

    procs = []

    def start(config_file, *extra, **kwargs) -> ExporterProc:
        proc = ExporterProc(config_file, *extra, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test command, which installs it")
    return path


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL cluster for the test session (tests/pg.py), removed at the end."""
    from pg import PgServer

    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_db(pg_server):
    """A fresh database of its own for one test: (url, password file)."""
    name = pg_server.new_database()
    yield pg_server.url(name), str(pg_server.password_file)
    pg_server.drop_database(name)
