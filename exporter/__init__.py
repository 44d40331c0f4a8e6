"""distribute-exporter: a Prometheus exporter for Distribute.ai's async inference API."""

__version__ = "0.1.0"

KINDS: tuple[str, ...] = ("chat", "images", "speech")
"""The three job kinds of the async API, each with its own `/async/<kind>/result` endpoint."""

FINAL_STATUSES: frozenset[str] = frozenset({"COMPLETED", "ERROR"})
"""Statuses after which the API never changes a job again."""
