"""Metrics: collectors over the aggregates, metric families, and the fast text exposition."""
