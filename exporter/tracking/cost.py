"""Pricing a job that has just become final: its estimated cost from the price table in effect at
its finished time, written on the job record and added to the cost counters, once.

"Estimated": the user's price file times what the API's answer reported (tokens, result items, one
request); never the provider's bill.
"""

from __future__ import annotations

from exporter.config.pricing import PriceTable
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.job import Job


def charge(job: Job, prices: PriceTable, agg: JobAggregates, now: float) -> None:
    """Price `job` (final, with its usage and results) once; unpriced when no entry matches."""
    finished = job.ended if job.ended is not None else now
    entry = prices.lookup(job.kind, job.model, finished)
    job.estimated_cost = None if entry is None else entry.cost(job.prompt_tokens, job.completion_tokens, job.results)
    job.price_entry = prices.record(entry)
    agg.record_cost(job.kind, job.group, job.model, prices.currency, job.estimated_cost, finished, now)
