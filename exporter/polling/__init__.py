"""Polling: the poll loop, its schedule and rate limit, and the HTTP client of the result endpoints."""
