"""The running exporter: the wiring of every step (exporter.py) and of the proxy (proxying.py)."""

from exporter.app.exporter import Exporter, default_transport

__all__ = ["Exporter", "default_transport"]
