"""state.url / state.password_file / --state.url: the form is checked at load and by --config.check
(without connecting), a password never appears, and a build without a PostgreSQL backend refuses to
start in one line. Run through the real CLI where a user would meet the answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, parse_config
from helpers import REPO, write_config

SECRET = "pg-s3cret-Xy7"


@pytest.mark.parametrize("url", [
    "postgresql://exporter@db:5432/distribute",
    "postgres://exporter@db/distribute?sslmode=verify-full&connect_timeout=5&application_name=x",
    "postgresql://exporter@[::1]:5433/distribute",
    "postgresql://exporter@db1:5432,db2:5433/distribute?target_session_attrs=read-write",
    "postgresql:///distribute?host=/var/run/postgresql",
])
def test_well_formed_urls_load(url):
    config = parse_config(f"state: {{url: '{url}'}}", env={})
    assert config.state.url == url and config.state.path == "distribute-exporter.db"
    assert parse_config("", env={}).state.url is None  # unset: SQLite, as before


@pytest.mark.parametrize("url, culprit", [
    (f"postgresql://exporter:{SECRET}@db/distribute", "must not hold a password (user:password@host)"),
    (f"postgresql://exporter@db/distribute?password={SECRET}", "must not hold a password (?password=)"),
    ("mysql://exporter@db/distribute", "must start with postgresql://"),
    ("db:5432/distribute", "must start with postgresql://"),
    ("postgresql://exporter@db:54x2/distribute", "port must be a number"),
    ("postgresql://exporter@db:70000/distribute", "port must be a number"),
    ("postgresql://exporter@db/distribute?sslmod=require", "unknown query parameter 'sslmod'"),
    ("postgresql://exporter@db/distribute?sslmode=always", "sslmode must be one of"),
])
def test_bad_urls_are_refused_in_one_line_without_the_password(url, culprit):
    with pytest.raises(ConfigError) as err:
        parse_config(f"state: {{url: '{url}'}}", env={})
    message = str(err.value)
    assert message.startswith("state.url: ") and culprit in message
    assert "\n" not in message and SECRET not in message


def test_password_file_is_read_as_a_secret(tmp_path):
    pw = tmp_path / "pgpass"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    config = parse_config(f"state: {{url: 'postgresql://e@db/d', password_file: {pw}}}", env={})
    assert config.state_password is not None and config.state_password.reveal() == SECRET
    assert SECRET not in repr(config)
    with pytest.raises(ConfigError, match="state.password_file: cannot read"):
        parse_config(f"state: {{password_file: {tmp_path / 'none'}}}", env={})


def _cli(*args: str, cwd=REPO, without_driver: bool = False) -> subprocess.CompletedProcess[str]:
    env = None
    if without_driver:  # a build without the `postgres` extra: asyncpg cannot be imported
        env = {**os.environ, "PYTHONPATH": str(_without_asyncpg(Path(cwd)))}
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env=env)


def _without_asyncpg(folder: Path) -> Path:
    site = folder / "no-asyncpg"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'asyncpg' or name.startswith('asyncpg.'):\n"
        "            raise ImportError('asyncpg is not part of this build')\n"
        "sys.meta_path.insert(0, _Hide())\n")
    return site


def test_config_check_validates_the_url_and_the_flag_without_connecting(tmp_path):
    # Port 1 on loopback: nothing listens there, so a check that connected would fail or hang.
    good = write_config(tmp_path, "state: {url: 'postgresql://exporter@127.0.0.1:1/distribute?sslmode=disable'}\n")
    run = _cli("--config.check", "--config.file", str(good))
    assert run.returncode == 0 and run.stdout.startswith("valid:") and "PostgreSQL" in run.stdout, run.stdout
    plain = tmp_path / "plain.yaml"
    plain.write_text("{}\n")
    run = _cli("--config.check", "--config.file", str(plain), "--state.url", f"postgresql://u:{SECRET}@h/d")
    assert run.returncode == 1
    assert run.stdout.strip().startswith("invalid: --state.url: must not hold a password"), run.stdout
    assert SECRET not in run.stdout + run.stderr and "Traceback" not in run.stderr
    run = _cli("--config.check", "--config.file", str(plain), "--state.url", "postgresql://u@127.0.0.1:1/d")
    assert run.returncode == 0 and "PostgreSQL" in run.stdout


def test_without_a_backend_the_exporter_refuses_to_start_in_one_line(tmp_path):
    pw = tmp_path / "pgpass"
    pw.write_text(SECRET)
    pw.chmod(0o600)
    config = write_config(tmp_path, f"state: {{url: 'postgresql://exporter@127.0.0.1:1/d', password_file: {pw}}}\n")
    run = _cli("--config.file", str(config), "--web.listen-address", "127.0.0.1:0", cwd=tmp_path,
               without_driver=True)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PostgreSQL backend not available in this build" in lines[0], run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert not (tmp_path / "distribute-exporter.db").exists()  # nothing opened, nothing written
    plain = write_config(tmp_path, "{}\n")
    run = _cli("--config.file", str(plain), "--web.listen-address", "127.0.0.1:0",
               "--state.url", "postgresql://exporter@127.0.0.1:1/d", cwd=tmp_path, without_driver=True)
    assert run.returncode == 1 and "PostgreSQL backend not available in this build" in run.stderr


# ---- the hash ring is gone: its keys and flags are refused, pointing at what replaces them ----------

RING_ADVICE = ("state.url", "docs/replicas.md#migrating-from-the-hash-ring")


@pytest.mark.parametrize("text", ["shard: {index: 0, count: 3}", "shard: {}",
                                  "shard:\n  peer_url_template: 'http://e-{index}:9877'"])
def test_shard_keys_are_refused_in_one_line_by_the_real_cli(tmp_path, text):
    config = write_config(tmp_path, text + "\n")
    check = _cli("--config.check", "--config.file", str(config))
    assert check.returncode == 1 and check.stdout.count("\n") == 1, check.stdout
    assert check.stdout.startswith("invalid: shard: ") and all(a in check.stdout for a in RING_ADVICE)
    start = _cli("--config.file", str(config), "--web.listen-address", "127.0.0.1:0", cwd=tmp_path)
    lines = [line for line in start.stderr.splitlines() if line.strip()]
    assert start.returncode == 1 and len(lines) == 1 and all(a in lines[0] for a in RING_ADVICE), start.stderr
    assert "Traceback" not in start.stderr


@pytest.mark.parametrize("flags", [["--shard.count", "3"], ["--shard.index=distribute-exporter-2"],
                                   ["--shard.peers", "http://a:9877,http://b:9877"],
                                   ["--shard.peer-url-template", "http://e-{index}:9877"]])
def test_shard_flags_are_refused_in_one_line_by_the_real_cli(tmp_path, flags):
    config = write_config(tmp_path, "{}\n")
    for extra in ([], ["--config.check"]):
        run = _cli("--config.file", str(config), "--web.listen-address", "127.0.0.1:0", *extra, *flags, cwd=tmp_path)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith(f"distribute-exporter: {flags[0].split('=')[0]}: ")
        assert all(a in lines[0] for a in RING_ADVICE) and run.stdout == ""
    assert not (tmp_path / "distribute-exporter.db").exists()
