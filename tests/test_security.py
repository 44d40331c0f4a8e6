"""The HTTP side under protection: exporter-toolkit web config, limits, and secrets kept secret."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from conftest import tool
from helpers import http, parse_samples, total, wait_for, write_config
from test_exporter import OLD, config_text

PASSWORD = "correct horse battery"


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def new_ca(directory: Path, name: str = "ca") -> Path:
    """A self-signed CA (`name`.crt, `name`.key) made with openssl."""
    openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.crt", "-days", "2", "-subj", f"/CN=test-{name}")
    (directory / f"{name}.key").chmod(0o600)
    return directory / f"{name}.crt"


def issue(directory: Path, name: str, san: str, ca: str = "ca") -> tuple[Path, Path]:
    """A certificate `name`.crt (key `name`.key, mode 600) with subjectAltName `san`, signed by `ca`."""
    openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    (directory / f"{name}.key").chmod(0o600)
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    new_ca(directory)
    issue(directory, "server", "IP:127.0.0.1,DNS:localhost")
    issue(directory, "client", "DNS:scraper")
    return {n: directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def web_config(directory: Path, pki: dict[str, Path], users: dict[str, str], client_auth: str = "NoClientCert") -> Path:
    hashed = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$") for u, p in users.items()}
    tls = {"cert_file": "server.crt", "key_file": "server.key", "min_version": "TLS12", "client_auth_type": client_auth}
    if client_auth != "NoClientCert":
        tls["client_ca_file"] = "ca.crt"
    path = directory / "web-config.yml"
    path.write_text(json.dumps({"tls_server_config": tls, "basic_auth_users": hashed,
                                "http_server_config": {"headers": {"X-Frame-Options": "deny",
                                                                   "X-Content-Type-Options": "nosniff"}}}))
    return path


def https(url: str, ca: Path, user: str | None = None, password: str | None = None,
          cert: tuple[Path, Path] | None = None) -> tuple[int, bytes, dict]:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_toolkit_web_config_tls_basic_auth_headers_and_live_reread(simulator, exporter, tmp_path):
    pki = make_pki(tmp_path)
    wc = web_config(tmp_path, pki, {"prometheus": PASSWORD, "grafana": "other"})
    check = subprocess.run([tool("promtool"), "check", "web-config", str(wc)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sim = simulator()
    cfg = write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n"))
    proc = exporter(cfg, "--web.config.file", str(wc), wait_ready=False)
    base = f"https://127.0.0.1:{proc.port}"
    wait_for(lambda: https(f"{base}/-/ready", pki["ca.crt"], "prometheus", PASSWORD)[0] == 200, 30, what="https ready")
    for path in ("/metrics", "/", "/-/healthy", "/-/ready", "/api/v1/jobs/x"):
        status, body, headers = https(base + path, pki["ca.crt"])
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic"), path
        assert headers["X-Frame-Options"] == "deny" and headers["X-Content-Type-Options"] == "nosniff"
    wrong_password = https(f"{base}/metrics", pki["ca.crt"], "prometheus", "nope")
    unknown_user = https(f"{base}/metrics", pki["ca.crt"], "mallory", "nope")
    assert wrong_password[0] == unknown_user[0] == 401 and wrong_password[1] == unknown_user[1]
    status, body, headers = https(f"{base}/metrics", pki["ca.crt"], "prometheus", PASSWORD)
    assert status == 200 and b"distribute_up" in body and headers["X-Content-Type-Options"] == "nosniff"
    with pytest.raises(OSError):  # plain HTTP is not served
        http("GET", f"http://127.0.0.1:{proc.port}/metrics", timeout=3)
    # the file is re-read when it changes: a new password works, the old one stops
    time.sleep(1.1)  # a distinct mtime
    web_config(tmp_path, pki, {"prometheus": "rotated-pw"})
    wait_for(lambda: https(f"{base}/metrics", pki["ca.crt"], "prometheus", "rotated-pw")[0] == 200, 10,
             what="the rotated password accepted")
    assert https(f"{base}/metrics", pki["ca.crt"], "prometheus", PASSWORD)[0] == 401
    # a broken file keeps the last good one
    wc.write_text("basic_auth_users: [not, a, mapping]\n")
    wait_for(lambda: "web config reload failed" in proc.log(), 10, what="the failed re-read logged")
    assert https(f"{base}/metrics", pki["ca.crt"], "prometheus", "rotated-pw")[0] == 200


def test_client_certificates_are_required_when_configured(simulator, exporter, tmp_path):
    pki = make_pki(tmp_path)
    wc = web_config(tmp_path, pki, {}, client_auth="RequireAndVerifyClientCert")
    sim = simulator()
    proc = exporter(write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n")),
                    "--web.config.file", str(wc), wait_ready=False)
    url = f"https://127.0.0.1:{proc.port}/-/ready"
    client = (pki["client.crt"], pki["client.key"])
    wait_for(lambda: https(url, pki["ca.crt"], cert=client)[0] == 200, 30, what="mTLS ready")
    with pytest.raises((ssl.SSLError, OSError)):
        https(url, pki["ca.crt"])


def test_a_broken_web_config_stops_the_start_with_one_line(simulator, tmp_path):
    from helpers import ExporterProc

    sim = simulator()
    wc = tmp_path / "web.yml"
    wc.write_text("tls_server_config: {cert_file: missing.crt, key_file: missing.key}\n")
    cfg = write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n"))
    proc = ExporterProc(cfg, "--web.config.file", str(wc), wait_ready=False)
    assert proc.popen.wait(20) == 1
    log = proc.log()
    assert "cannot load the web config" in log and "tls_server_config" in log and "Traceback" not in log
    proc.stop()


def test_limits_on_body_headers_slow_clients_and_connections(simulator, exporter, tmp_path):
    sim = simulator()
    cfg = write_config(tmp_path, config_text(sim.url, "  - {kind: chat, ids_file: none.txt}\n").replace(
        "state:", "web: {read_timeout_seconds: 1, max_connections: 20, max_request_body_bytes: 4096}\nstate:"))
    proc = exporter(cfg, env={"DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN": "t0ken-registration"})
    big = {"kind": "chat", "ids": ["3b241101-e2bb-4255-8caf-4136c566a962"] * 40000}
    assert http("POST", f"{proc.url}/api/v1/jobs", big, {"Authorization": "Bearer t0ken-registration"})[0] == 413
    assert http("GET", f"{proc.url}/metrics", headers={"X-Big": "y" * 20000})[0] in (400, 431)
    # a client that trickles its request line is cut off after read_timeout_seconds
    slow = socket.create_connection(("127.0.0.1", proc.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    slow.settimeout(10)
    assert slow.recv(1024) == b""  # closed by the server
    assert time.monotonic() - started < 5
    slow.close()
    # connections past max_connections are closed at once; the exporter keeps answering
    held = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(30)]
    try:
        closed = 0
        for s in held:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
        assert closed >= 10
    finally:
        for s in held:
            s.close()
    wait_for(lambda: http("GET", f"{proc.url}/-/healthy")[0] == 200, 10, what="served again")
    assert parse_samples(proc.metrics(), "distribute_exporter_http_connections_rejected_total")[()] >= 10


def test_the_api_key_never_appears_anywhere(simulator, exporter, tmp_path):
    key = "sk-live-TOPSECRET-0123456789"
    sim = simulator("--api-key", key, "--fault.error-500-ratio", "0.5", "--fault.malformed-ratio", "0.2")
    ids = sim.create("chat", 5, age_seconds=OLD)
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o644)  # readable by others: warned about
    cfg = write_config(tmp_path, config_text(sim.url, f"  - {{kind: chat, ids: {json.dumps(ids)}}}\n").replace(
        "api: {", f"api: {{api_key_file: {key_file}, "))
    proc = exporter(cfg, "--log.level", "debug", "--log.format", "json")
    wait_for(lambda: total(proc.samples("distribute_jobs_finished_total")) == 5, 30, what="polling with the key")
    http("POST", f"{proc.url}/-/reload")
    outputs = [proc.metrics(), http("GET", f"{proc.url}/")[1].decode(), proc.log()]
    check = subprocess.run(["python", "-m", "exporter", "--config.check", "--config.file", str(cfg)],
                           capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    outputs += [check.stdout, check.stderr]
    for text in outputs:
        assert key not in text
    assert "readable by group or others" in proc.log()
    for line in proc.log().splitlines():
        json.loads(line)  # --log.format json: one JSON event per line
