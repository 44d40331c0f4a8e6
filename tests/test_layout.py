"""The layout of exporter/: import-linter contracts kept (and able to fail), modules of a readable
size, no HTML in Python source, and pages served from the templates packaged with the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO, Proc, free_port, http, wait_for

LINT = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 400


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _lint_with(tmp_path: Path, module: str, added: str) -> subprocess.CompletedProcess[str]:
    """import-linter over a copy of the tree where `module` (a path under exporter/) ends with `added`."""
    shutil.copytree(REPO / "exporter", tmp_path / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "exporter" / module
    path.write_text(path.read_text() + added)
    return _lint(tmp_path)


def test_a_deliberate_breach_of_the_layers_fails_the_contract(tmp_path):
    """The contract is able to fail: tracking importing the HTTP layer breaks it."""
    result = _lint_with(tmp_path, "tracking/store.py", "\nfrom exporter.http.server import Site  # deliberate breach\n")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "exporter.tracking.store -> exporter.http.server" in result.stdout


def test_a_cycle_between_sibling_modules_fails_the_contract(tmp_path):
    result = _lint_with(tmp_path, "tracking/migrations.py", "\nif False:\n    from exporter.tracking import store  # cycle\n")
    assert result.returncode != 0 and "BROKEN" in result.stdout


def test_no_module_is_over_the_size_that_reads_in_one_sitting():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "exporter").rglob("*.py")}
    assert len(sizes) > 30
    too_big = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_big, too_big


def test_no_html_is_built_in_python_source():
    # The simulator's one HTML string is a fault: the broken answer of a misbehaving gateway, not a page.
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "exporter").rglob("*.py")
                 if "simulator" not in p.parts and any(tag in p.read_text() for tag in ("<html", "<table", "<body", "<tr>", "<td"))]
    assert not offenders


def test_the_installed_package_serves_its_landing_page_from_packaged_templates(tmp_path):
    """`pip install .` (not editable) into a separate folder: the landing page comes from there."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    templates = target / "exporter" / "http" / "templates"
    assert (templates / "landing.html").is_file()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    env = {"PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    where = subprocess.run([sys.executable, "-c", "import exporter.http.pages as p; print(p.__file__)"], cwd=run_dir,
                           env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout
    proc = Proc([sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{port}"],
                cwd=run_dir, env=env)
    try:
        wait_for(lambda: http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200, timeout=60, what="demo ready")
        status, body, headers = http("GET", f"http://127.0.0.1:{port}/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert "Tracked jobs by kind and status" in page and 'href="metrics"' in page
    finally:
        proc.stop()
