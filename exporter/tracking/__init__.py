"""Tracked jobs: their state in memory and in the SQLite file and the aggregates metrics read."""
