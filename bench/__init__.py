"""Benchmarks of distribute-exporter: `python -m bench` writes bench/RESULTS.md."""
