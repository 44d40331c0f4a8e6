"""Tracked jobs: their state in memory and in the SQLite file, the aggregates metrics read, shard ownership."""
