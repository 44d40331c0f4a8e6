"""The configuration's types: every key with its default and validation rules, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from exporter import KINDS
from exporter.config.pricing import PriceTable

API_KEY_ENV = "DISTRIBUTE_API_KEY"
REGISTRATION_TOKEN_ENV = "DISTRIBUTE_EXPORTER_REGISTRATION_TOKEN"

# About 0.5 s to 2 h, roughly doubling: inference jobs span seconds (speech) to an hour (long chat).
DEFAULT_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class ConfigError(ValueError):
    """A config that cannot be used; the message starts with the key path of the culprit."""


# The hash ring (shard.* keys, --shard.* flags) is gone: what a config or command line that still
# uses it is told, in one line.
RING_GONE = ("the hash ring is gone: several replicas now share one PostgreSQL database through state.url; "
             "see docs/replicas.md#migrating-from-the-hash-ring")


class Secret:
    """A value that must never be printed: its repr and str give a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _opt(default: Any, **rules: Any) -> Any:
    """A config field with its default and validation rules (min, max, choices, positive)."""
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata=rules)
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = _opt("https://api.distribute.ai")
    api_key_file: str | None = _opt(None)
    timeout_seconds: float = _opt(10.0, positive=True)
    max_concurrency: int = _opt(8, min=1, max=1024)
    max_requests_per_second: float = _opt(20.0, min=0)  # 0 = unlimited
    http_client: str = _opt("builtin", choices=("builtin", "aiohttp", "httpx"))
    max_response_bytes: int = _opt(1024 * 1024, min=1024)


@dataclass(frozen=True)
class PollConfig:
    interval_seconds: float = _opt(15.0, positive=True)
    max_interval_seconds: float = _opt(300.0, positive=True)
    not_found_grace_seconds: float = _opt(600.0, min=0)
    auth_backoff_max_seconds: float = _opt(300.0, positive=True)
    # While polling fails: the log's reminder that it still does, at most this often.
    failing_reminder_seconds: float = _opt(300.0, positive=True)


@dataclass(frozen=True)
class JobGroup:
    kind: str = _opt("", choices=KINDS, required=True)
    group: str = _opt("default", nonempty=True)
    ids: tuple[str, ...] = _opt(())
    ids_file: str | None = _opt(None)
    forget_removed: bool = _opt(True)


@dataclass(frozen=True)
class WebConfig:
    listen_address: str = _opt("0.0.0.0:9877")
    # Where users reach the exporter (behind a proxy, a balancer, a DNS name), as Prometheus's
    # --web.external-url; alert links are built on it. Unset: derived from listen_address.
    external_url: str | None = _opt(None)
    registration_token_file: str | None = _opt(None)
    config_file: str | None = _opt(None)
    max_request_body_bytes: int = _opt(1024 * 1024, min=1024)
    max_header_bytes: int = _opt(8190, min=1024)
    max_connections: int = _opt(256, min=1)
    read_timeout_seconds: float = _opt(30.0, positive=True)
    request_timeout_seconds: float = _opt(30.0, positive=True)


@dataclass(frozen=True)
class StateConfig:
    path: str = _opt("distribute-exporter.db", nonempty=True)
    retention_seconds: float = _opt(7 * 24 * 3600.0, positive=True)
    flush_interval_seconds: float = _opt(1.0, positive=True)
    # Unset: the SQLite file at `path` (one process). A postgresql:// URL (libpq's URI form, no
    # password): the shared PostgreSQL database of several replicas (docs/replicas.md).
    url: str | None = _opt(None)
    password_file: str | None = _opt(None)


@dataclass(frozen=True)
class MetricsConfig:
    duration_buckets: tuple[float, ...] = _opt(DEFAULT_DURATION_BUCKETS)
    # A job still unfinished this long after its `created` is counted once in
    # distribute_jobs_deadline_exceeded_total: the SLOs' bad event for a stuck job.
    job_deadline_seconds: float = _opt(3600.0, positive=True)


@dataclass(frozen=True)
class PricingConfig:
    file: str | None = _opt(None)  # the price file; without it nothing is priced
    currency: str = _opt("USD", pattern=r"[A-Za-z][A-Za-z0-9_]{0,15}")


@dataclass(frozen=True)
class ProxyConfig:
    """The pass-through proxy for the async API (docs/proxy.md): off while listen_address is unset."""

    listen_address: str | None = _opt(None)
    default_group: str = _opt("default", nonempty=True)
    track_results: bool = _opt(True)
    timeout_seconds: float = _opt(60.0, positive=True)
    max_body_bytes: int = _opt(64 * 1024 * 1024, min=1024)
    # An application connection must send a whole request head within this many seconds of its first
    # byte, and a body without a pause this long (both paths); past it the connection is closed.
    header_timeout_seconds: float = _opt(10.0, positive=True)
    # Open application connections at most; past it new ones wait in the listen backlog.
    max_connections: int = _opt(1024, min=1, max=1_000_000)
    # false: a create is in the create journal (kill -9 safe) before its answer, forced to the disk by
    # the next batch, within state.flush_interval_seconds; true: the journal is fsynced before each
    # create's answer (slower on most disks).
    fsync_creates: bool = _opt(False)


@dataclass(frozen=True)
class TracingConfig:
    """One OpenTelemetry trace per finished job (README, Traces): off while endpoint is unset."""

    endpoint: str | None = _opt(None)  # OTLP/HTTP base URL, e.g. http://collector:4318
    headers_file: str | None = _opt(None)  # "Name: value" lines sent with every export (vendors' keys)
    service_name: str = _opt("distribute-exporter", nonempty=True)
    # Traces owed but not exported yet, kept in the state; past this the oldest are dropped (counted).
    max_pending: int = _opt(100_000, min=1)


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    jobs: tuple[JobGroup, ...] = ()
    web: WebConfig = field(default_factory=WebConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # Not keys of the file: what loading it found.
    base_dir: Path = field(default=Path("."), metadata={"internal": True})
    api_key: Secret | None = field(default=None, metadata={"internal": True})
    registration_token: Secret | None = field(default=None, metadata={"internal": True})
    state_password: Secret | None = field(default=None, metadata={"internal": True})  # state.password_file, read
    warnings: tuple[str, ...] = field(default=(), metadata={"internal": True})
    prices: PriceTable | None = field(default=None, metadata={"internal": True})  # pricing.file, parsed
    # tracing.headers_file, parsed: (name, value) pairs; the values are never printed.
    tracing_headers: tuple[tuple[str, Secret], ...] = field(default=(), metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        """A path written in the config, relative to the config file's folder."""
        return Path(path) if os.path.isabs(path) else self.base_dir / path

    def groups(self) -> list[tuple[str, str]]:
        """Every (kind, group) the config names, in order, each once."""
        return list(dict.fromkeys((g.kind, g.group) for g in self.jobs))
