"""The manual: the docs site builds strictly, documents every key, flag, route and metric the code has,
and the README's own commands work from a fresh clone."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from helpers import REPO, Proc, free_port, http, wait_for, write_config

DOCS = REPO / "docs"
README = REPO / "README.md"
# mkdocs (>= 1.6) nags on every run about a successor; the nag is not the build's business.
QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def site_pages() -> list[Path]:
    """The pages of the site: docs/**/*.md without docs/_incoming/ (excluded in mkdocs.yml)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_incoming" not in p.relative_to(DOCS).parts)


def docs_text() -> str:
    return "\n".join(p.read_text() for p in site_pages())


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300, env=QUIET)


# --- The site ---------------------------------------------------------------------------------------

def test_the_site_builds_strictly(tmp_path):
    built = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "index.html").exists()
    for page in site_pages():  # every page is in the nav (an omitted one would warn, but be sure)
        name = page.relative_to(DOCS).with_suffix("")
        html = tmp_path / "site" / ("index.html" if name.name == "index" else name / "index.html")
        assert html.exists(), f"{page} was not built"


def test_the_strict_build_refuses_a_broken_anchor_and_skips_incoming_notes(tmp_path):
    """The check above can fail: a link to a heading that does not exist stops the build, and notes
    in docs/_incoming/ (which may link anywhere) stay out of the site."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "docs" / "_incoming").mkdir(exist_ok=True)
    (copy / "docs" / "_incoming" / "feat-x.md").write_text("# For metrics.md\n\n[gone](nowhere.md#nothing)\n")
    built = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    assert not (tmp_path / "site" / "_incoming").exists()

    with (copy / "docs" / "cost.md").open("a") as page:
        page.write("\nSee [the ring](replicas.md#no-such-heading).\n")
    broken = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site2")
    assert broken.returncode != 0
    assert "no-such-heading" in broken.stdout + broken.stderr


# --- Everything the code has is documented ----------------------------------------------------------

def config_keys() -> list[str]:
    """Every key of the typed config (exporter/config/model.py), as the docs write it."""
    from exporter.config.model import Config

    keys = []
    for section in dataclasses.fields(Config):
        if section.metadata.get("internal"):
            continue
        if section.name == "jobs":
            from exporter.config.model import JobGroup
            keys += [f"jobs[].{f.name}" for f in dataclasses.fields(JobGroup)]
            continue
        keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory())]
    return keys


def test_every_config_key_is_documented():
    keys = config_keys()
    assert len(keys) > 40 and "proxy.fsync_creates" in keys and "jobs[].ids_file" in keys
    text = docs_text()
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"config keys no page of docs/ documents: {missing}"


def flags(parser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"]


def test_every_flag_is_documented():
    from exporter.cli import build_parser
    from exporter.simulator.__main__ import build_parser as simulator_parser

    exporter_flags, simulator_flags = flags(build_parser()), flags(simulator_parser())
    assert "--config.check" in exporter_flags and "--generate-via" in simulator_flags
    text = docs_text()
    # a flag as a whole word: `--shard.index` must not count as `--shard.index-x`
    missing = [f for f in exporter_flags + simulator_flags
               if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w.-])", text)]
    assert not missing, f"flags no page of docs/ documents: {missing}"


def _path_text(node: ast.expr) -> str | None:
    """A route's path as written: a string, or an f-string with its fields as {name}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                       for v in node.values)
    return None


def routes_in(package: Path) -> set[str]:
    """Every path given to `router.add_<method>(...)` anywhere under `package`."""
    found = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr.startswith("add_") and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "router" and node.args):
                path = _path_text(node.args[0])
                assert path is not None, f"{source}: a route whose path is not written out"
                found.add(path)
    return found


def test_every_route_is_documented():
    routes = routes_in(REPO / "exporter")
    assert {"/metrics", "/-/ready", "/api/v1/jobs/{job_id}", "/metrics/jobs", "/__admin/faults",
            "/async/{kind}/create"} <= routes
    text = docs_text()
    missing = []
    for route in sorted(routes):
        # the docs write an id as <id> and the three kinds as {chat,images,speech} or <kind>
        spellings = {route.replace("{job_id}", "<id>")}
        if "{kind}" in route:
            spellings = {route.replace("{kind}", k) for k in ("{chat,images,speech}", "<kind>", "{kind}")}
        if not any(re.search(rf"`(?:[A-Z]+ )?{re.escape(s)}[` ?]", text) for s in spellings):
            missing.append(route)
    assert not missing, f"routes no page of docs/ documents: {missing}"


def metric_names_in_code() -> set[str]:
    """Every metric family the collectors build (`Family(name, kind, ...)`), as it is exposed."""
    names = set()
    for source in (REPO / "exporter").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Family" and len(node.args) >= 2:
                name, kind = (a.value if isinstance(a, ast.Constant) else None for a in node.args[:2])
                assert isinstance(name, str) and isinstance(kind, str), f"{source}: a Family with a computed name"
                names.add(name + "_total" if kind == "counter" else name)
    return names


def test_every_metric_is_documented(tmp_path, exporter):
    names = metric_names_in_code()
    # ... and every family a real exporter serves (proxy and prices on) is one of those
    (tmp_path / "prices.yaml").write_text(
        "prices:\n  - kind: chat\n    model: m\n    effective_from: 2026-01-01\n    per_request: 0.01\n")
    config = write_config(tmp_path, f"""\
api:
  base_url: http://127.0.0.1:{free_port()}
pricing:
  file: prices.yaml
proxy:
  listen_address: 127.0.0.1:{free_port()}
jobs:
  - kind: chat
    ids: [3f1c1e0a-8a4e-4f6b-9d3e-2b8f0a1c5d7e]
""")
    served = set()
    for line in exporter(config).metrics().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not name.startswith(("process_", "python_")):
                served.add(name if kind != "counter" or name.endswith("_total") else name + "_total")
    assert {"distribute_jobs", "distribute_estimated_cost_total", "distribute_proxy_requests_total"} <= served
    assert served <= names, f"served but not found as Family(...) in the code: {served - names}"

    text = docs_text()
    missing = [n for n in sorted(names) if f"`{n}" not in text]
    assert not missing, f"metrics no page of docs/ documents: {missing}"
    assert "`process_*`" in text and "`python_info`" in text


# --- The README -------------------------------------------------------------------------------------

def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


def headings_of(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # no comments in code blocks
    return {slugify(h.strip(), "-") for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    assert "../shared" not in text  # a clone has no shared/ beside it
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 15
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), f"README links {link}: no such file"
        if anchor:
            assert anchor in headings_of(target), f"README links {link}: no such heading"
    # every page of the site is reachable from the README
    assert {p.relative_to(REPO).as_posix() for p in site_pages()} <= {link.partition("#")[0] for link in local}


def test_the_readmes_minimal_config_is_valid(tmp_path):
    """The README's config, checked by the README's own --config.check command."""
    section = readme_section("A minimal config")
    [config] = code_blocks(section, "yaml")
    (tmp_path / "config.yaml").write_text(config)
    check_command = commands(code_blocks(section, "sh")[0])[0]
    assert "--config.check" in check_command
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the installed command
    check = subprocess.run(["bash", "-c", check_command], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PATH": path, "DISTRIBUTE_API_KEY": "k"})
    assert check.returncode == 0 and check.stdout.startswith("valid: config.yaml"), check.stdout + check.stderr


def commands(block: str) -> list[str]:
    """The commands of a shell code block: comment lines dropped, line continuations joined."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def clone_as_committed(destination: Path) -> Path:
    """A `git clone` of this repository with the working tree as it would be committed (tracked and
    new files, minus what .gitignore ignores), so that the test checks what is about to land."""
    def git(*args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {})})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    destination.parent.mkdir(parents=True, exist_ok=True)
    index = destination.parent / "readme-test.index"
    env = {"GIT_INDEX_FILE": str(index)}
    git("read-tree", "HEAD", env=env)
    git("add", "-A", env=env)
    tree = git("write-tree", env=env)
    commit = git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit-tree", tree, "-p", "HEAD",
                 "-m", "README test", env=env)
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(REPO), str(destination)],
                   check=True, timeout=120)
    subprocess.run(["git", "checkout", "-q", "--detach", commit], cwd=destination, check=True, timeout=120)
    return destination


def run_shell(command: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_readmes_install_and_quick_start_work_from_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    source = "https://github.com/distribute-exporter/distribute-exporter"

    # Install: the clone is this repository's, the rest runs as written.
    install = [c for b in code_blocks(readme_section("Install"), "sh") for c in commands(b)]
    clone = re.fullmatch(r"git clone (\S+?)(?:\.git)? && cd (\S+)", install[0])
    assert clone and clone.group(1) == source, f"the Install section should start with a clone of {source}"
    assert not [c for c in install if re.search(r"pip install [^.]*distribute-exporter", c)], \
        "the Install section installs from PyPI, where the package is not published"
    fresh = clone_as_committed(tmp_path / "install" / clone.group(2))
    for command in install[1:]:
        done = run_shell(command, fresh)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    assert done.stdout.startswith("distribute-exporter "), done.stdout  # the last one: --version

    # Quick start: exactly two commands, in another fresh clone.
    demo_block, test_block = code_blocks(readme_section("Quick start"), "sh")
    [demo], [tests] = commands(demo_block), commands(test_block)
    assert demo.endswith("distribute-exporter --demo") and tests == "bash tests/run.sh"
    setup, _, run = demo.rpartition(" && ")
    if setup in install[1:]:
        # The same command already ran in a fresh clone (Install): that clone is in the very state the
        # Quick start's first step would leave a second one in, so the demo runs there (a second
        # clone and `pip install .` would prove nothing more and cost a wheel build).
        quick = fresh
    else:
        quick = clone_as_committed(tmp_path / "quick" / "distribute-exporter")
        done = run_shell(setup, quick)
        assert done.returncode == 0, f"{setup}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    app = Proc(["bash", "-c", f"exec {run}"], cwd=quick)
    try:
        assert app.popen.stdout is not None
        fd = app.popen.stdout.fileno()
        seen = bytearray()

        def status_page() -> str | None:
            # Read the pipe's raw bytes: the demo prints its URLs in one write, and a buffered
            # readline would keep the later lines where select() cannot see them.
            if app.popen.poll() is not None:
                raise AssertionError(f"the demo exited {app.popen.returncode}: {app.log()}")
            if not select.select([fd], [], [], 1)[0]:
                return None
            seen.extend(os.read(fd, 65536))
            found = re.search(r"status page:\s+(http://\S+)/", seen.decode(errors="replace"))
            return found.group(1) if found else None
        url = wait_for(status_page, 120, what="the demo's URLs")
        wait_for(lambda: http("GET", f"{url}/-/ready", timeout=5)[0] == 200, 120, what="the demo ready")
        assert "distribute_jobs" in http("GET", f"{url}/metrics")[1].decode()
    finally:
        assert app.stop(signal.SIGINT, timeout=30) == 0, app.log()  # Ctrl-C stops it

    # The test command, up to collecting the suite (running it here would run this test again).
    done = run_shell(f"{tests} --collect-only", quick, timeout=1200)  # tests/run.sh passes -q itself
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = re.search(r"^(\d+) tests collected", done.stdout, re.M)
    assert collected and int(collected.group(1)) > 300, done.stdout[-2000:]
    assert "tests/test_docs.py::test_the_site_builds_strictly" in done.stdout
