"""Reading the config file again for a reload (SIGHUP, /-/reload), the same for both backends."""

from __future__ import annotations

import logging
from typing import Protocol

from exporter.config import Config, ConfigError, load_config

log = logging.getLogger("distribute.exporter")


class ReloadStatus(Protocol):
    def reloaded(self, ok: bool) -> None: ...


def read_again(config_path: str | None, status: ReloadStatus) -> tuple[Config | None, str]:
    """The config file read again, or None and why not. A bad file is logged in one line and counted
    as a failed reload; the caller keeps the running config."""
    if config_path is None:
        return None, "no config file to reload"
    try:
        return load_config(config_path), ""
    except ConfigError as exc:
        status.reloaded(False)
        log.error("config reload failed, keeping the running config: %s", exc)
        return None, f"reload failed: {exc}"
