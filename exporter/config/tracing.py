"""The `tracing` section checked at load: the endpoint's form, the OpenTelemetry extra being
installed, and the headers file (vendors' keys: parsed here, kept as Secrets, never printed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from urllib.parse import urlsplit

from exporter.config.model import Config, ConfigError, Secret

OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
INSTALL_HINT = "pip install 'distribute-exporter[otel]'"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


def otel_installed() -> bool:
    """True when the OpenTelemetry SDK and its OTLP/HTTP exporter (the `otel` extra) can be imported."""
    try:
        return (importlib.util.find_spec("opentelemetry.sdk.trace") is not None
                and importlib.util.find_spec(OTLP_EXPORTER_MODULE) is not None)
    except ModuleNotFoundError:  # a parent package is missing
        return False


def load_tracing(config: Config) -> Config:
    """Check `tracing` and read its headers file; ConfigError (one line) naming the culprit."""
    tracing = config.tracing
    if tracing.endpoint is None:
        return config
    parts = urlsplit(tracing.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"tracing.endpoint: must be an http:// or https:// URL (the OTLP/HTTP receiver, "
                          f"such as http://collector:4318), not {tracing.endpoint[:80]!r}")
    if "@" in parts.netloc:
        raise ConfigError("tracing.endpoint: must not hold a user name or password (user@host); "
                          "put credentials in tracing.headers_file")
    if not otel_installed():
        raise ConfigError(f"tracing.endpoint: traces need the OpenTelemetry SDK and OTLP exporter, which are "
                          f"not installed: {INSTALL_HINT}")
    headers = read_headers(config, tracing.headers_file) if tracing.headers_file else ()
    return dataclasses.replace(config, tracing_headers=headers)


def read_headers(config: Config, name: str) -> tuple[tuple[str, Secret], ...]:
    """`Name: value` lines ('#' comments and blank lines skipped). Errors name the line, never its value."""
    file = config.resolve(name)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tracing.headers_file: cannot read {file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    headers: list[tuple[str, Secret]] = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(key) or not value or "\r" in value or "\n" in value:
            raise ConfigError(f"tracing.headers_file: {file} line {line_no}: expected 'Name: value' "
                              "(the line is not shown: it may hold a key)")
        headers.append((key, Secret(value)))
    return tuple(headers)
