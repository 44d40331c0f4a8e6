"""Which state store backends this build has.

SQLite (state.path) is always there. A backend for `state.url` registers itself here under its URL
schemes when its package is part of the build; until one does, a config with state.url is refused
at start (not at load: `--config.check` judges the config's form, not the build).
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

StoreFactory = Callable[..., Any]

_BACKENDS: dict[str, StoreFactory] = {}


class BackendMissing(LookupError):
    """state.url names a backend this build does not have."""


def register(schemes: tuple[str, ...], factory: StoreFactory) -> None:
    for scheme in schemes:
        _BACKENDS[scheme] = factory


def backend_for(url: str) -> StoreFactory:
    """The factory registered for `url`'s scheme; BackendMissing (one line) when there is none."""
    try:
        return _BACKENDS[urlsplit(url).scheme]
    except KeyError:
        raise BackendMissing("state.url: PostgreSQL backend not available in this build") from None
