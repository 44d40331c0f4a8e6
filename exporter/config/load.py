"""Loading the config file: parse YAML, build the typed Config, check every value and cross-field
rule once, read the secret files.

Every error names the key path of the culprit (`jobs[2].ids[5]: not a UUID v4: 'abc'`), so that
`--config.check` and a failed reload can say in one line what to fix.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.api.ids import all_uuid4, is_uuid4, normalise
from exporter.config.addresses import AddressError, parse_listen_address
from exporter.config.model import API_KEY_ENV, REGISTRATION_TOKEN_ENV, RING_GONE, Config, ConfigError, Secret
from exporter.config.pricing import PriceFileError, load_prices
from exporter.config.state_url import StateUrlError, check_state_url
from exporter.config.tracing import load_tracing


def load_config(path: str | Path, *, env: dict[str, str] | None = None) -> Config:
    """Read, parse and validate a config file; raise ConfigError naming the culprit."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(text, base_dir=file.resolve().parent, env=env, name=str(file))


def parse_config(text: str, *, base_dir: Path = Path("."), env: dict[str, str] | None = None,
                 name: str = "config") -> Config:
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{name}:{where}: {problem}") from None
    if data is None:
        data = {}
    if isinstance(data, dict) and "shard" in data:
        raise ConfigError(f"shard: {RING_GONE}")
    config = _build(Config, data, "")
    config = _check_jobs(config)
    _check_cross_fields(config)
    config = _load_secrets(dataclasses.replace(config, base_dir=base_dir), os.environ if env is None else env)
    return load_tracing(_load_prices(config))


# libyaml's loader, when PyYAML was built with it, parses a config of 50,000 inline ids ten times
# faster than the pure-Python one (0.17 s against 1.6 s); both build the same safe types.
_FAST_LOADER: type | None = None
if hasattr(yaml, "CSafeLoader"):
    _STR_TAG = "tag:yaml.org,2002:str"
    _UUID_SHAPED = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}").fullmatch

    class _FastLoader(yaml.CSafeLoader):  # type: ignore[misc,name-defined]
        def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
            # A plain scalar shaped like a UUID can only be a string (no YAML 1.1 int, float,
            # timestamp or bool looks like one): skip the implicit resolvers' regexes per id.
            if kind is yaml.ScalarNode and implicit[0] and _UUID_SHAPED(value):
                return _STR_TAG
            return super().resolve(kind, value, implicit)

    _FAST_LOADER = _FastLoader


def _parse_yaml(text: str) -> Any:
    if _FAST_LOADER is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        # libyaml words its errors and places its marks differently: the pure loader parses the
        # bad file again so that the message is the one the manual and the tests show.
        return yaml.safe_load(text)


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '<top>'}: must be a mapping, not {_type_name(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(path, str(key))}: unknown key (known: {', '.join(fields)})")
    values = {}
    hints = typing.get_type_hints(cls)
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if f.metadata.get("required"):
                raise ConfigError(f"{key_path}: required")
            continue
        values[name] = _value(hints[name], data[name], key_path, f.metadata)
    return cls(**values)


def _value(hint: Any, raw: Any, path: str, rules: dict[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # `X | None`
        if raw is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _value(inner, raw, path, rules)
    if origin is tuple:
        if not isinstance(raw, list):
            raise ConfigError(f"{path}: must be a list, not {_type_name(raw)}")
        item = typing.get_args(hint)[0]
        if item is str and all(type(v) is str for v in raw):
            return tuple(raw)  # what the loop below answers for strings, without a path per id
        return tuple(_value(item, v, f"{path}[{i}]", {}) for i, v in enumerate(raw))
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw, path)
    return _check_scalar(hint, raw, path, rules)


def _check_scalar(hint: type, raw: Any, path: str, rules: dict[str, Any]) -> Any:
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{path}: must be true or false, not {_type_name(raw)}")
        return raw
    if hint in (int, float):
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (hint is int and not isinstance(raw, int)):
            raise ConfigError(f"{path}: must be {'an integer' if hint is int else 'a number'}, not {_type_name(raw)}")
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: must be a finite number")
        if rules.get("positive") and raw <= 0:
            raise ConfigError(f"{path}: must be greater than 0, not {raw}")
        if "min" in rules and raw < rules["min"]:
            raise ConfigError(f"{path}: must be at least {rules['min']}, not {raw}")
        if "max" in rules and raw > rules["max"]:
            raise ConfigError(f"{path}: must be at most {rules['max']}, not {raw}")
        return hint(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{path}: must be a string, not {_type_name(raw)}")
    if "choices" in rules and raw not in rules["choices"]:
        raise ConfigError(f"{path}: must be one of {', '.join(rules['choices'])}, not {raw!r}")
    if rules.get("nonempty") and not raw.strip():
        raise ConfigError(f"{path}: must not be empty")
    if "pattern" in rules and not re.fullmatch(rules["pattern"], raw):
        raise ConfigError(f"{path}: must match {rules['pattern']}, not {raw[:40]!r}")
    return raw


def _check_jobs(config: Config) -> Config:
    """UUID v4 ids, no id in two groups, and every group with ids or an ids_file."""
    if _ids_plainly_fine(config):
        return dataclasses.replace(config, jobs=tuple(dataclasses.replace(g, ids=tuple(map(normalise, g.ids)))
                                                      for g in config.jobs))
    seen: dict[str, str] = {}
    groups = []
    for g_index, group in enumerate(config.jobs):
        if not group.ids and not group.ids_file:
            raise ConfigError(f"jobs[{g_index}]: needs ids or ids_file")
        ids = []
        for i_index, job_id in enumerate(group.ids):
            where = f"jobs[{g_index}].ids[{i_index}]"
            if not is_uuid4(job_id):
                raise ConfigError(f"{where}: not a UUID v4: {str(job_id)[:60]!r}")
            key = normalise(job_id)
            if key in seen:
                raise ConfigError(f"{where}: duplicate id {key} (also at {seen[key]})")
            seen[key] = where
            ids.append(key)
        groups.append(dataclasses.replace(group, ids=tuple(ids)))
    return dataclasses.replace(config, jobs=tuple(groups))


def _ids_plainly_fine(config: Config) -> bool:
    """Every group has ids or an ids_file and every inline id is a UUID v4 listed once: the common
    case, checked in bulk. Otherwise the loop of `_check_jobs` finds and names the first culprit."""
    if not all(g.ids or g.ids_file for g in config.jobs):
        return False
    ids = [i for g in config.jobs for i in g.ids]
    return all_uuid4(ids) and len(set(map(normalise, ids))) == len(ids)


def _check_cross_fields(config: Config) -> None:
    if config.poll.max_interval_seconds < config.poll.interval_seconds:
        raise ConfigError("poll.max_interval_seconds: must be at least poll.interval_seconds")
    buckets = config.metrics.duration_buckets
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
        raise ConfigError("metrics.duration_buckets: must be positive and strictly increasing")
    try:
        parse_listen_address(config.web.listen_address)
    except AddressError as exc:
        raise ConfigError(f"web.listen_address: {exc}") from None
    if config.proxy.listen_address is not None:
        try:
            parse_listen_address(config.proxy.listen_address)
        except AddressError as exc:
            raise ConfigError(f"proxy.listen_address: {exc}") from None
    if config.web.external_url is not None:
        check_external_url("web.external_url", config.web.external_url)
    if not config.api.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"api.base_url: must start with http:// or https://, not {config.api.base_url!r}")
    # Shown on the status page and in logs; the key belongs in api.api_key_file.
    _no_credentials("api.base_url", config.api.base_url, "put the API key in api.api_key_file")
    if config.state.url is not None:
        check_state(config.state.url, "state.url")


def check_state(url: str, where: str) -> None:
    """ConfigError naming `where` (the key or the flag) unless `url` is a well-formed state.url."""
    try:
        check_state_url(url)
    except StateUrlError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_external_url(where: str, url: str) -> None:
    """ConfigError unless `url` is an http(s) URL with a host and no user name or password."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http:// or https:// URL with a host, not {url[:80]!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: must not hold a query or a fragment: {url[:80]!r}")
    _no_credentials(where, url, "the exporter's address is shown in alerts and on /metrics")


def _no_credentials(where: str, url: str, instead: str) -> None:
    """ConfigError if the URL holds a user name or password (user@host): they would show in logs."""
    if "@" in urlsplit(url).netloc:
        raise ConfigError(f"{where}: must not hold a user name or password (user@host); {instead}")


def _load_secrets(config: Config, env: Any) -> Config:
    warnings: list[str] = []
    api_key = _read_secret(config, config.api.api_key_file, "api.api_key_file", warnings)
    if api_key is None and env.get(API_KEY_ENV):
        api_key = Secret(env[API_KEY_ENV].strip())
    if api_key is None:
        warnings.append(f"no API key: neither api.api_key_file nor {API_KEY_ENV} is set; result requests go "
                        "without one and the API will refuse them")
    token = _read_secret(config, config.web.registration_token_file, "web.registration_token_file", warnings)
    if token is None and env.get(REGISTRATION_TOKEN_ENV):
        token = Secret(env[REGISTRATION_TOKEN_ENV].strip())
    # Read at load like the other secret files, so that --config.check finds a missing one; libpq's
    # PGPASSWORD and PGPASSFILE are left to the driver.
    state_password = _read_secret(config, config.state.password_file, "state.password_file", warnings)
    return dataclasses.replace(config, api_key=api_key, registration_token=token, state_password=state_password, warnings=tuple(warnings))


def _read_secret(config: Config, name: str | None, path: str, warnings: list[str]) -> Secret | None:
    if not name:
        return None
    file = config.resolve(name)
    try:
        mode = file.stat().st_mode
        value = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise ConfigError(f"{path}: {file} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"{path}: {file} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return Secret(value)


def _load_prices(config: Config) -> Config:
    """Parse pricing.file as part of the config: a broken price file fails the whole load (and so a
    reload keeps both the running config and its price table)."""
    name = config.pricing.file
    if not name:
        return config
    file = config.resolve(name)
    try:
        table = load_prices(file, name, config.pricing.currency)
    except PriceFileError as exc:
        raise ConfigError(f"pricing.file: {file}: {exc}") from None
    return dataclasses.replace(config, prices=table)


def expand_ids_file(config: Config, pattern: str) -> list[Path]:
    """The files an `ids_file` glob matches now, sorted."""
    return sorted(Path(p) for p in glob.glob(str(config.resolve(pattern)), recursive=True) if os.path.isfile(p))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
