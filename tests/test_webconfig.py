"""The web config means what it means to the Prometheus exporter-toolkit: the same files accepted and
refused, the same defaults, the same behaviour in handshakes and requests (docs/security.md, the table).

Every file here is written for these tests from what the toolkit's code decides; the exporter runs as
a real process for start, --config.check and live re-read, and TLS is checked with real handshakes.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from helpers import ExporterProc, wait_for, write_config
from test_security import https, issue, make_pki, new_ca

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))

from exporter.http.webconfig import WebConfigError, load_web_config  # noqa: E402

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
CERT = "cert_file: server.crt\n  key_file: server.key\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_pki(directory)
    (directory / "empty.pem").write_text("")
    subprocess.run(["openssl", "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out",
                    "encrypted.key"], cwd=directory, check=True, capture_output=True)
    return directory


def load(directory: Path, text: str, starting: bool = True):
    path = directory / "web.yml"
    path.write_text(text)
    return load_web_config(path, starting=starting)


def tls(extra: str = "", cert: str = CERT) -> str:
    return "tls_server_config:\n  " + cert + "".join(f"  {line}\n" for line in extra.splitlines())


# (name, file, None when accepted or a piece of the refusal)
DECISIONS = [
    ("empty file: plain HTTP", "", None),
    ("comments only", "# nothing here\n", None),
    ("null document", "~\n", None),
    ("not a mapping", "just some words\nand more\n", "must be a mapping"),
    ("not YAML", "rate_limit: [1s\n", "not valid YAML"),
    ("unknown top-level key", "tls_config: {}\n", "tls_config: unknown key"),
    ("unknown key in tls_server_config", "tls_server_config:\n  cert_flie: a\n", "cert_flie: unknown key"),
    ("unknown key in http_server_config", "http_server_config: {http3: true}\n", "http3: unknown key"),
    ("unknown key in rate_limit", "rate_limit: {period: 1s}\n", "period: unknown key"),
    ("a key set twice", "rate_limit:\n  burst: 1\n  burst: 2\n", "set twice"),
    ("a user set twice", f"basic_auth_users:\n  ann: '{HASH}'\n  ann: '{HASH}'\n", "set twice"),
    ("TLS keys that do not switch TLS on", "tls_server_config: {min_version: TLS13, client_allowed_sans: [a]}\n", None),
    ("empty cert_file and key_file: plain HTTP", "tls_server_config: {cert_file: '', key_file: ''}\n", None),
    ("cert_file and key_file", tls(), None),
    ("inline cert and key", "", None),  # written by the test from the PEM files
    ("cert_file inline key", "", None),
    ("no cert", "tls_server_config: {key_file: server.key}\n", "missing one of cert or cert_file"),
    ("empty inline cert", "tls_server_config: {cert: '', key_file: server.key}\n", "missing one of cert or cert_file"),
    ("no key", "tls_server_config: {cert_file: server.crt}\n", "missing one of key or key_file"),
    ("empty inline key", "tls_server_config: {cert_file: server.crt, key: ''}\n", "missing one of key or key_file"),
    ("client_auth_type alone switches TLS on",
     "tls_server_config: {client_auth_type: RequireAndVerifyClientCert}\n", "missing one of cert"),
    ("missing cert file", tls(cert="cert_file: nowhere.crt\n  key_file: server.key\n"), "nowhere.crt"),
    ("missing key file", tls(cert="cert_file: server.crt\n  key_file: nowhere.key\n"), "nowhere.key"),
    ("an encrypted key", tls(cert="cert_file: server.crt\n  key_file: encrypted.key\n"), "encrypted"),
    ("key that does not match the cert", tls(cert="cert_file: server.crt\n  key_file: client.key\n"), "cannot load"),
    ("unknown client_auth_type", tls("client_auth_type: RequireSomething"), "invalid 'RequireSomething'"),
    ("client_auth_type is case-sensitive", tls("client_auth_type: noclientcert"), "invalid"),
    ("client_ca_file without client_auth_type", tls("client_ca_file: ca.crt"), "without a client auth policy"),
    ("client_ca_file with NoClientCert", tls("client_ca_file: ca.crt\nclient_auth_type: NoClientCert"),
     "without a client auth policy"),
    ("inline client_ca without a policy", tls("client_ca: not even PEM"), "without a client auth policy"),
    ("client_ca_file naming no file", tls("client_ca_file: nowhere.crt\nclient_auth_type: VerifyClientCertIfGiven"),
     "nowhere.crt"),
    ("NoClientCert", tls("client_auth_type: NoClientCert"), None),
    ("VerifyClientCertIfGiven without a CA", tls("client_auth_type: VerifyClientCertIfGiven"), None),
    ("RequireAndVerifyClientCert without a CA", tls("client_auth_type: RequireAndVerifyClientCert"), None),
    ("RequireAndVerifyClientCert with a CA", tls("client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: ca.crt"),
     None),
    ("a CA file without a certificate", tls("client_auth_type: VerifyClientCertIfGiven\nclient_ca_file: empty.pem"),
     None),
    ("RequireClientCert, the old name, with a CA", tls("client_auth_type: RequireClientCert\nclient_ca_file: ca.crt"),
     None),
    ("RequestClientCert without a CA", tls("client_auth_type: RequestClientCert"), None),
    ("RequireAnyClientCert without a CA (Python's ssl)", tls("client_auth_type: RequireAnyClientCert"),
     "Python's ssl cannot"),
    ("RequestClientCert with SANs, without a CA (Python's ssl)",
     tls("client_auth_type: RequestClientCert\nclient_allowed_sans: [scraper]"), "Python's ssl cannot"),
    ("client_allowed_sans not a list", tls("client_allowed_sans: scraper"), "must be a list"),
    ("unknown min_version", tls("min_version: TLS111"), "unknown TLS version 'TLS111'"),
    ("versions are case-sensitive", tls("max_version: tls13"), "unknown TLS version"),
    ("unknown version with TLS off", "tls_server_config: {min_version: SSL3}\n", "unknown TLS version"),
    ("every version name", tls("min_version: TLS10\nmax_version: TLS11"), None),
    ("min_version above max_version is accepted", tls("min_version: TLS13\nmax_version: TLS12"), None),
    ("every cipher suite Go offers", tls("cipher_suites: [" + ", ".join(
        ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
        + [f"TLS_ECDHE_{a}_WITH_{c}" for a in ("ECDSA", "RSA") for c in (
            "AES_128_CBC_SHA", "AES_256_CBC_SHA", "AES_128_GCM_SHA256", "AES_256_GCM_SHA384",
            "CHACHA20_POLY1305_SHA256")]) + "]"), None),
    ("an invented cipher suite", tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_512_GCM_SHA1024]"), "unknown name"),
    ("an insecure cipher suite", tls("cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]"), "unknown name"),
    ("every curve", tls("curve_preferences: [CurveP256, CurveP384, CurveP521, X25519]"), None),
    ("an invented curve", tls("curve_preferences: [CurveP1024]"), "unknown name 'CurveP1024'"),
    ("curve names are Go's", tls("curve_preferences: [secp384r1]"), "unknown name"),
    ("prefer_server_cipher_suites false", tls("prefer_server_cipher_suites: false"), None),
    ("prefer_server_cipher_suites yaml 1.1 word", tls("prefer_server_cipher_suites: off"), None),
    ("prefer_server_cipher_suites not a bool", tls("prefer_server_cipher_suites: maybe"), "true or false"),
    ("http2 quoted is a string", "http_server_config: {http2: 'false'}\n", "true or false"),
    ("http2 false", "http_server_config: {http2: false}\n", None),
    ("every header", "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
     "    X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1; mode=block\n"
     "    Strict-Transport-Security: max-age=3600\n    Content-Security-Policy: default-src 'self'\n", None),
    ("a header that cannot be set", "http_server_config: {headers: {Server: me}}\n", "cannot be set"),
    ("header names are case-sensitive", "http_server_config: {headers: {x-frame-options: deny}}\n", "cannot be set"),
    ("X-Frame-Options value", "http_server_config: {headers: {X-Frame-Options: allow}}\n", "must be one of"),
    ("X-Frame-Options value case", "http_server_config: {headers: {X-Frame-Options: DENY}}\n", "must be one of"),
    ("X-Frame-Options blank", "http_server_config: {headers: {X-Frame-Options: }}\n", "must be one of"),
    ("X-Content-Type-Options value", "http_server_config: {headers: {X-Content-Type-Options: sniff}}\n",
     "must be one of"),
    ("a free header left blank", "http_server_config: {headers: {Content-Security-Policy: }}\n", None),
    ("a plain password", "basic_auth_users: {ann: hunter2}\n", "not a bcrypt hash"),
    ("a user without a hash", "basic_auth_users: {ann: }\n", "not a bcrypt hash"),
    ("bcrypt cost below 4", f"basic_auth_users: {{ann: '{HASH[:4]}03{HASH[6:]}'}}\n", "cost"),
    ("a newer hash version", f"basic_auth_users: {{ann: '$3a{HASH[3:]}'}}\n", "not a bcrypt hash"),
    ("$2x$ read as Go reads it", f"basic_auth_users: {{ann: '$2x{HASH[3:]}'}}\n", None),
    ("users as a list", "basic_auth_users: [ann]\n", "must be a mapping"),
    ("users without TLS", f"basic_auth_users: {{ann: '{HASH}'}}\n", None),
    ("rate limit", "rate_limit: {interval: 1m30s, burst: 5}\n", None),
    ("rate limit interval quoted number", "rate_limit: {interval: '5'}\n", "not a duration"),
    ("rate limit interval bad unit", "rate_limit: {interval: 5 seconds}\n", "not a duration"),
    ("rate limit burst quoted", "rate_limit: {interval: 1s, burst: '5'}\n", "must be an integer"),
    ("rate limit burst a word", "rate_limit: {burst: many}\n", "must be an integer"),
]


@pytest.mark.parametrize("name,text,refusal", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_each_file_is_accepted_or_refused_as_the_toolkit_does(pki, name, text, refusal):
    if name == "inline cert and key":
        text = json.dumps({"tls_server_config": {"cert": (pki / "server.crt").read_text(),
                                                 "key": (pki / "server.key").read_text()}})
    elif name == "cert_file inline key":
        text = json.dumps({"tls_server_config": {"cert_file": "server.crt", "key": (pki / "server.key").read_text()}})
    if refusal is None:
        load(pki, text)
    else:
        with pytest.raises(WebConfigError, match=None) as caught:
            load(pki, text)
        assert refusal in str(caught.value)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_defaults_and_values_read_as_go_reads_them(pki):
    plain = load(pki, "")
    assert plain.tls is None and plain.users == {} and plain.headers == {} and plain.http2 is True
    assert plain.rate_interval == 0 and plain.rate_burst == 0
    on = load(pki, tls())
    assert (on.tls["min_version"], on.tls["max_version"], on.tls["client_auth_type"]) == ("TLS12", "TLS13", "")
    assert on.context.minimum_version == ssl.TLSVersion.TLSv1_2 and on.context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert on.context.verify_mode == ssl.CERT_NONE and on.tls["cert_file"] == str(pki / "server.crt")
    assert load(pki, tls("client_auth_type: RequestClientCert")).context.verify_mode == ssl.CERT_NONE
    assert load(pki, tls("client_auth_type: VerifyClientCertIfGiven")).context.verify_mode == ssl.CERT_OPTIONAL
    assert load(pki, tls("client_auth_type: RequireAndVerifyClientCert")).context.verify_mode == ssl.CERT_REQUIRED
    # a string field takes any scalar as written; a blank free header is sent blank
    headers = load(pki, "http_server_config: {headers: {X-XSS-Protection: 1, Content-Security-Policy: }}\n").headers
    assert headers == {"X-XSS-Protection": "1", "Content-Security-Policy": ""}
    assert load(pki, "http_server_config: {http2: no}\n").http2 is False
    assert load(pki, "http_server_config:\n").http2 is False  # null zeroes the section, as Go does
    assert load(pki, "http_server_config: {}\n").http2 is True
    # rate limit: a Go duration; a bare number is nanoseconds; a float burst is truncated
    limit = load(pki, "rate_limit: {interval: 1m30s, burst: 2.9}\n")
    assert (limit.rate_interval, limit.rate_burst) == (90.0, 2)
    assert load(pki, "rate_limit: {interval: 250}\n").rate_interval == pytest.approx(250e-9)
    assert load(pki, "rate_limit: {interval: 1.5h}\n").rate_interval == 5400.0
    assert load(pki, "rate_limit: {interval: -1s, burst: 1}\n").rate_interval < 0  # no limit
    assert any("one curve" in w for w in load(pki, tls("curve_preferences: [X25519, CurveP256]")).warnings)
    assert any("no TLS handshake" in w for w in load(pki, tls("min_version: TLS13\nmax_version: TLS12")).warnings)
    burst0 = load(pki, "rate_limit: {interval: 1s}\n")
    assert burst0.rate_burst == 0 and any("429" in w for w in burst0.warnings)


def test_http2_cipher_rule_refuses_the_start_only(pki):
    """Go's HTTP/2 server refuses cipher_suites without an AES-128-GCM suite at start, though the
    toolkit's Validate (promtool check web-config) passes the file and a live re-read takes it."""
    text = tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\nmax_version: TLS12")
    with pytest.raises(WebConfigError, match="HTTP/2 needs"):
        load(pki, text)
    load(pki, text, starting=False)
    load(pki, text + "http_server_config: {http2: false}\n")
    load(pki, tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\nmin_version: TLS13"))
    load(pki, tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]"))


# Debian's promtool (Prometheus 2.42) carries an older exporter-toolkit built with an older Go. Files
# using keys newer than its toolkit are not comparable (it refuses them as unknown fields); of the rest,
# these are decided differently, and why. Every other decision above must be promtool's too.
PROMTOOL_DIFFERS = {
    "an insecure cipher suite": "its Go still listed RSA key exchange among tls.CipherSuites()",
    "RequireAnyClientCert without a CA (Python's ssl)": "Python's ssl cannot accept unverified certificates",
}


def test_promtool_check_web_config_agrees(pki):
    from conftest import tool

    compared = 0
    for name, text, refusal in DECISIONS:
        if name in PROMTOOL_DIFFERS or name.startswith(("inline cert", "cert_file inline")):
            continue
        (pki / "web.yml").write_text(text)
        check = subprocess.run([tool("promtool"), "check", "web-config", str(pki / "web.yml")],
                               capture_output=True, text=True)
        if "not found in type" in check.stdout + check.stderr and "unknown key" not in (refusal or ""):
            continue  # a key its toolkit does not know yet
        compared += 1
        assert (check.returncode == 0) == (refusal is None), (name, check.stdout + check.stderr)
    assert compared >= 50


# -- the exporter as a process -------------------------------------------------------------------------

def exporter_config(directory: Path) -> Path:
    from test_exporter import config_text

    # No API is needed to serve these pages: the base URL points at a closed port.
    return write_config(directory, config_text("http://127.0.0.1:9", "  - {kind: chat, ids_file: none.txt}\n"))


def config_check(directory: Path, web: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file",
                           str(exporter_config(directory)), "--web.config.file", str(web)],
                          capture_output=True, text=True, cwd=ROOT)


def start(directory: Path, web_text: str, ready, env: dict[str, str] | None = None) -> ExporterProc:
    web = directory / "web.yml"
    web.write_text(web_text)
    proc = ExporterProc(exporter_config(directory), "--web.config.file", str(web), env=env, wait_ready=False)
    try:
        wait_for(lambda: _alive(proc) and _answers(lambda: ready(proc)), 30, what="the exporter serving")
    except BaseException:
        proc.stop()
        raise
    return proc


def _alive(proc: ExporterProc) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"exporter exited {proc.popen.returncode}: {proc.log()}")
    return True


def _answers(call) -> bool:
    try:
        return call()
    except OSError:
        return False


def reread(proc: ExporterProc, web: Path, text: str) -> None:
    """Rewrite the web config and wait until the running exporter has taken it."""
    before = proc.log().count("web config reloaded")
    web.write_text(text)
    wait_for(lambda: proc.log().count("web config reloaded") > before, 15, what="the web config re-read")


def get(proc: ExporterProc, pki: Path, cert: tuple[Path, Path] | None = None, path: str = "/-/healthy") -> int:
    return https(f"https://127.0.0.1:{proc.port}{path}", pki / "ca.crt", cert=cert)[0]


def refused(proc: ExporterProc, pki: Path, cert: tuple[Path, Path] | None = None) -> bool:
    """The TLS connection fails (handshake refused or connection dropped): no HTTP answer at all."""
    try:
        get(proc, pki, cert)
    except OSError:
        return True
    return False


def client(pki: Path, name: str = "client") -> tuple[Path, Path]:
    return pki / f"{name}.crt", pki / f"{name}.key"


def test_client_ca_without_a_policy_is_refused_at_check_start_and_reread(tmp_path):
    make_pki(tmp_path)
    web = tmp_path / "web.yml"
    for extra in ("client_ca_file: ca.crt", "client_ca_file: ca.crt\nclient_auth_type: NoClientCert"):
        web.write_text(tls(extra))
        check = config_check(tmp_path, web)
        assert check.returncode == 1 and "without a client auth policy" in check.stdout, check.stdout + check.stderr
    proc = ExporterProc(exporter_config(tmp_path), "--web.config.file", str(web), wait_ready=False)
    try:
        assert proc.popen.wait(30) == 1
        assert "cannot load the web config" in proc.log() and "without a client auth policy" in proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()
    # running with mutual TLS, a re-read that drops the policy but keeps the CA is refused: the old stays
    proc = start(tmp_path, tls("client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: ca.crt"),
                 lambda p: get(p, tmp_path, client(tmp_path)) == 200)
    try:
        assert refused(proc, tmp_path)
        web.write_text(tls("client_ca_file: ca.crt"))
        wait_for(lambda: "web config reload failed" in proc.log(), 15, what="the refused re-read logged")
        assert "without a client auth policy" in proc.log()
        assert refused(proc, tmp_path) and get(proc, tmp_path, client(tmp_path)) == 200
    finally:
        proc.stop()


def test_verify_if_given_without_a_ca_checks_against_the_system_roots(tmp_path):
    make_pki(tmp_path)
    new_ca(tmp_path, "other-ca")
    issue(tmp_path, "stranger", "DNS:scraper", ca="other-ca")
    web = tmp_path / "web.yml"
    web.write_text(tls("client_auth_type: VerifyClientCertIfGiven"))
    check = config_check(tmp_path, web)
    assert check.returncode == 0 and check.stdout.startswith("valid"), check.stdout + check.stderr
    # OpenSSL's default roots honour SSL_CERT_FILE: the test CA stands in for the system's roots
    proc = start(tmp_path, web.read_text(), lambda p: get(p, tmp_path) == 200,
                 env={"SSL_CERT_FILE": str(tmp_path / "ca.crt")})
    try:
        assert get(proc, tmp_path) == 200  # no certificate: served
        assert get(proc, tmp_path, client(tmp_path)) == 200  # one the system's roots trust
        assert refused(proc, tmp_path, client(tmp_path, "stranger"))  # one they do not
        reread(proc, web, tls("client_auth_type: RequireAndVerifyClientCert"))
        assert refused(proc, tmp_path)
        assert get(proc, tmp_path, client(tmp_path)) == 200
        assert refused(proc, tmp_path, client(tmp_path, "stranger"))
        # a CA file holding no certificate is an empty pool, not the system's roots
        (tmp_path / "empty.pem").write_text("not a certificate\n")
        reread(proc, web, tls("client_auth_type: VerifyClientCertIfGiven\nclient_ca_file: empty.pem"))
        assert get(proc, tmp_path) == 200 and refused(proc, tmp_path, client(tmp_path))
        # RequestClientCert asks for nothing it would check: every client is served
        reread(proc, web, tls("client_auth_type: RequestClientCert"))
        assert get(proc, tmp_path) == 200 and get(proc, tmp_path, client(tmp_path, "stranger")) == 200
    finally:
        proc.stop()


def _s_client_run(proc: ExporterProc, pki: Path, args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port}", "-CAfile",
                           str(pki / "ca.crt"), "-verify_return_error", *args],
                          input=stdin, capture_output=True, text=True, timeout=30)


def s_client(proc: ExporterProc, pki: Path, *args: str) -> str | None:
    """The cipher `openssl s_client` agreed on with the exporter, or None when the handshake failed."""
    run = _s_client_run(proc, pki, list(args))
    found = [line.split("Cipher is ")[1].strip() for line in run.stdout.splitlines() if "Cipher is " in line]
    return found[0] if run.returncode == 0 and found and found[0] != "(NONE)" else None


def test_versions_ciphers_and_curves_in_real_handshakes(tmp_path):
    make_pki(tmp_path)
    web = tmp_path / "web.yml"
    proc = start(tmp_path, tls(), lambda p: get(p, tmp_path) == 200)
    try:
        # defaults: TLS 1.2 to 1.3 and Go's default TLS 1.2 suites (ECDHE only; CBC with SHA-1, not SHA-256)
        assert s_client(proc, tmp_path, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0") is None
        assert s_client(proc, tmp_path, "-tls1_2") and s_client(proc, tmp_path, "-tls1_3")
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA") == "ECDHE-RSA-AES128-SHA"
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256") is None
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256") is None
        # Go's server picks ChaCha20 for a client that puts it first, AES-GCM otherwise
        chacha_first = "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256"
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", chacha_first) == "ECDHE-RSA-CHACHA20-POLY1305"
        aes_first = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", aes_first) == "ECDHE-RSA-AES256-GCM-SHA384"
        # ALPN: HTTP/1.1 is agreed on (no HTTP/2 here); a renegotiation is refused, as by Go's server
        run = _s_client_run(proc, tmp_path, ["-alpn", "h2,http/1.1"])
        assert "ALPN protocol: http/1.1" in run.stdout
        run = _s_client_run(proc, tmp_path, ["-tls1_2"], stdin="R\n")
        assert "RENEGOTIATING" in run.stdout + run.stderr and "no renegotiation" in run.stderr
        reread(proc, web, tls("min_version: TLS13"))
        assert s_client(proc, tmp_path, "-tls1_2") is None and s_client(proc, tmp_path, "-tls1_3")
        reread(proc, web, tls("max_version: TLS12"))
        assert s_client(proc, tmp_path, "-tls1_3") is None and s_client(proc, tmp_path, "-tls1_2")
        reread(proc, web, tls("min_version: TLS10"))
        assert s_client(proc, tmp_path, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0")
        # cipher_suites restricts TLS 1.2; the server picks in Go's order whatever the file's order
        reread(proc, web, tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "
                              "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\nprefer_server_cipher_suites: false"))
        both = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", both) == "ECDHE-RSA-AES128-GCM-SHA256"
        assert s_client(proc, tmp_path, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA") is None
        assert s_client(proc, tmp_path, "-tls1_3")  # TLS 1.3 suites are not chosen by the file, as in Go
        reread(proc, web, tls("cipher_suites: [TLS_AES_128_GCM_SHA256]"))  # no TLS 1.2 suite left
        assert s_client(proc, tmp_path, "-tls1_2") is None and s_client(proc, tmp_path, "-tls1_3")
        # one curve is enforced, in TLS 1.3 as in 1.2
        reread(proc, web, tls("curve_preferences: [CurveP521]\nmin_version: TLS13"))
        assert s_client(proc, tmp_path, "-groups", "P-384") is None
        assert s_client(proc, tmp_path, "-groups", "P-521")
        reread(proc, web, tls("curve_preferences: [CurveP384]\nmax_version: TLS12"))
        assert s_client(proc, tmp_path, "-groups", "P-256") is None
        assert s_client(proc, tmp_path, "-groups", "P-384")
    finally:
        proc.stop()


def test_client_allowed_sans_are_checked_in_the_handshake(tmp_path):
    make_pki(tmp_path)
    issue(tmp_path, "other", "DNS:other-scraper,email:ops@example.com")
    issue(tmp_path, "by-ip", "IP:::ffff:10.0.0.7")
    web = tmp_path / "web.yml"
    pinned = "client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: ca.crt\n"
    proc = start(tmp_path, tls(pinned + "client_allowed_sans: [scraper, ops@example.com]"),
                 lambda p: get(p, tmp_path, client(tmp_path)) == 200)
    try:
        assert get(proc, tmp_path, client(tmp_path, "other")) == 200  # the e-mail SAN matches
        reread(proc, web, tls(pinned + "client_allowed_sans: [scraper]"))
        assert refused(proc, tmp_path, client(tmp_path, "other"))  # a good certificate with another name
        assert get(proc, tmp_path, client(tmp_path)) == 200
        reread(proc, web, tls(pinned + "client_allowed_sans: [10.0.0.7]"))  # IPs compared as Go prints them
        assert get(proc, tmp_path, client(tmp_path, "by-ip")) == 200
        reread(proc, web, tls(pinned + "client_allowed_sans: []"))  # an empty list lets no certificate in
        assert refused(proc, tmp_path, client(tmp_path))
        # a certificate that is only asked for, not required: without one, no SAN, no entry
        reread(proc, web, tls("client_auth_type: VerifyClientCertIfGiven\nclient_ca_file: ca.crt\n"
                              "client_allowed_sans: [scraper]"))
        assert refused(proc, tmp_path) and get(proc, tmp_path, client(tmp_path)) == 200
        # NoClientCert asks for no certificate, so the SAN list is not read at all
        reread(proc, web, tls("client_allowed_sans: [scraper]"))
        assert get(proc, tmp_path) == 200
    finally:
        proc.stop()


def test_certificate_and_ca_files_are_reread_without_touching_the_web_config(tmp_path):
    make_pki(tmp_path)
    new_ca(tmp_path, "ca2")
    issue(tmp_path, "client2", "DNS:scraper", ca="ca2")
    proc = start(tmp_path, tls("client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: client-ca.pem"
                               ).replace("client-ca.pem", str(tmp_path / "ca.crt")),
                 lambda p: get(p, tmp_path, client(tmp_path)) == 200)
    web = tmp_path / "web.yml"
    try:
        served = _served_serial(proc, tmp_path)
        issue(tmp_path, "server", "IP:127.0.0.1,DNS:localhost")  # cert-manager style rotation, same names
        wait_for(lambda: _served_serial(proc, tmp_path) != served, 15, what="the new certificate served")
        # the client CA file now names the other CA only: the first CA is no longer trusted
        (tmp_path / "client-ca.pem").write_text((tmp_path / "ca2.crt").read_text())
        reread(proc, web, web.read_text().replace(str(tmp_path / "ca.crt"), "client-ca.pem"))
        assert get(proc, tmp_path, client(tmp_path, "client2")) == 200
        assert refused(proc, tmp_path, client(tmp_path))
        (tmp_path / "client-ca.pem").write_text((tmp_path / "ca.crt").read_text())  # the file alone changes
        wait_for(lambda: _answers(lambda: get(proc, tmp_path, client(tmp_path)) == 200), 15,
                 what="the rewritten CA file taken")
        assert refused(proc, tmp_path, client(tmp_path, "client2"))
    finally:
        proc.stop()


def _served_serial(proc: ExporterProc, pki: Path) -> str:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            return tls_socket.getpeercert()["serialNumber"]


def test_basic_auth_headers_and_rate_limit_behave_as_the_toolkit(tmp_path):
    from helpers import http

    long_password = b"p" * 72
    hashed = bcrypt.hashpw(long_password, bcrypt.gensalt(4)).decode()
    users = {"ann": hashed, "bob": "$2x" + bcrypt.hashpw(b"bobs", bcrypt.gensalt(4)).decode()[3:]}
    headers = {"X-Frame-Options": "deny", "Content-Security-Policy": ""}
    text = json.dumps({"basic_auth_users": users, "http_server_config": {"headers": headers}})
    proc = start(tmp_path, text, lambda p: http("GET", f"{p.url}/-/healthy")[0] == 401)
    web = tmp_path / "web.yml"
    url = f"{proc.url}/-/healthy"

    def auth(scheme: str, credentials: bytes) -> tuple[int, bytes, dict]:
        return http("GET", url, headers={"Authorization": f"{scheme} {base64.b64encode(credentials).decode()}"})

    try:
        status, body, answer = http("GET", url)
        assert (status, body, answer["WWW-Authenticate"]) == (401, b"Unauthorized\n", "Basic")
        assert answer["X-Content-Type-Options"] == "nosniff"
        assert answer["X-Frame-Options"] == "deny" and answer["Content-Security-Policy"] == ""  # on a 401 too
        assert auth("Basic", b"ann:" + long_password)[0] == 200
        assert auth("basic", b"ann:" + long_password)[0] == 200  # the scheme in any case, as Go reads it
        assert auth("Basic", b"ann:" + long_password + b"beyond 72 bytes")[0] == 200  # bcrypt reads 72
        assert auth("Basic", b"ann:" + long_password[:-1])[0] == 401
        assert auth("Basic", b"ann")[0] == 401  # no colon: no credentials
        assert auth("Basic", b"bob:bobs")[0] == 200  # a $2x$ hash, read as Go reads it
        assert auth("Basic", b"eve:bobs")[0] == 401
        # rate limit: checked before anything else; its 429 carries none of the configured headers
        reread(proc, web, json.dumps({"rate_limit": {"interval": "1h", "burst": 2},
                                      "http_server_config": {"headers": headers}}))
        assert [http("GET", url)[0] for _ in range(3)] == [200, 200, 429]
        status, body, answer = http("GET", url)
        assert (status, body) == (429, b"Too Many Requests\n") and "X-Frame-Options" not in answer
        assert answer["X-Content-Type-Options"] == "nosniff"  # Go's http.Error sets it on every error
        reread(proc, web, "rate_limit: {interval: 1s}\n")  # burst 0: nothing passes, as in the toolkit
        assert http("GET", url)[0] == 429
        reread(proc, web, "rate_limit: {interval: -1s}\n")  # a negative interval: no limit
        assert all(http("GET", url)[0] == 200 for _ in range(5))
    finally:
        proc.stop()


def test_cipher_suites_http2_cannot_use_stop_the_start_and_the_check(tmp_path):
    make_pki(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(tls("cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\nmax_version: TLS12"))
    check = config_check(tmp_path, web)
    assert check.returncode == 1 and "HTTP/2 needs" in check.stdout
    proc = ExporterProc(exporter_config(tmp_path), "--web.config.file", str(web), wait_ready=False)
    try:
        assert proc.popen.wait(30) == 1 and "HTTP/2 needs" in proc.log()
    finally:
        proc.stop()
    web.write_text(web.read_text() + "http_server_config: {http2: false}\n")
    assert config_check(tmp_path, web).returncode == 0
