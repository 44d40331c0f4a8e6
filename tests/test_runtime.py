"""How the exporter runs: the event loop it picks (--event-loop), and the state file's checkpoints
done beside the writer (so a proxied create's commit never waits on them)."""

from __future__ import annotations

import subprocess
import sys

import httpx

from helpers import REPO, free_port, wait_for
from test_proxy import FAST_BODY, proxy_config


def _loop_line(exp) -> str:
    wait_for(lambda: "event loop" in exp.log(), 10, what="the event loop logged")
    return next(line for line in exp.log().splitlines() if "event loop" in line)


def test_uvloop_by_default_asyncio_on_request_and_the_proxy_works_on_both(tmp_path, exporter, simulator):
    sim = simulator()
    for choice, expected in ((None, "uvloop"), ("asyncio", "asyncio")):
        work = tmp_path / (choice or "default")
        work.mkdir()
        port = free_port()
        extra = ("--log.level", "debug") + (("--event-loop", choice) if choice else ())
        exp = exporter(proxy_config(work, sim.url, port), *extra)
        assert _loop_line(exp).endswith(f"event loop: {expected}\"")
        answer = httpx.post(f"http://127.0.0.1:{port}/async/speech/create", json=FAST_BODY, timeout=30)
        assert answer.status_code == 200 and answer.json()["id"]
        exp.stop()


def test_event_loop_uvloop_without_uvloop_is_one_clear_line(tmp_path):
    # uvloop made unimportable in a real process: the flag must say what is missing, not trace back.
    (tmp_path / "config.yaml").write_text("jobs: []\n")
    code = ("import sys; sys.modules['uvloop'] = None; from exporter.cli import main; "
            "sys.exit(main(['--config.file', 'config.yaml', '--event-loop', 'uvloop', "
            f"'--web.listen-address', '127.0.0.1:{free_port()}']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60,
                          env={"PYTHONPATH": str(REPO)})
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "--event-loop uvloop: uvloop is not installed" in err and "Traceback" not in err


def test_created_ids_reach_the_database_file_itself_while_running(tmp_path, exporter, simulator):
    """Commits no longer checkpoint (copy the WAL into the database file) on their own: the flush
    loop does it on its own connection. Without it, a few rows would stay in the WAL file only."""
    sim = simulator()
    port = free_port()
    exporter(proxy_config(tmp_path, sim.url, port, flush=0.2))
    ids = [httpx.post(f"http://127.0.0.1:{port}/async/speech/create", json=FAST_BODY, timeout=30).json()["id"]
           for _ in range(5)]
    database = tmp_path / "state.db"
    wait_for(lambda: all(i.encode() in database.read_bytes() for i in ids), 20,
             what="the created ids in state.db itself (checkpointed)")
