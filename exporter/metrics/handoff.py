"""Hand-offs between replicas (only with peers configured). Exposition, for example:

    distribute_handoff_total{outcome="delivered"} 1520.0
    distribute_handoff_total{outcome="retried"} 12.0
    distribute_handoff_pending 0.0
"""

from __future__ import annotations

from typing import Iterator

from exporter.metrics.families import Family, FamilyCollector
from exporter.tracking.outbox import HandoffStats

OUTCOMES = ("delivered", "retried", "received", "invalid", "refused")


class HandoffCollector(FamilyCollector):
    def __init__(self, stats: HandoffStats) -> None:
        self.stats = stats

    def families(self) -> Iterator[Family]:
        counts = {(o,): self.stats.outcomes[o] for o in OUTCOMES}
        yield Family("distribute_handoff", "counter", "Hand-off entries by outcome: delivered (the owner "
                     "acknowledged one sent from here), retried (a delivery failed; the entry waits and is "
                     "sent again), received (applied here from a peer), invalid (received but malformed: "
                     "dropped), refused (a hand-off request without the right token).", ("outcome",), counts)
        yield Family("distribute_handoff_pending", "gauge", "Hand-off entries in this replica's outbox that "
                     "their owner has not acknowledged yet.", (), {(): max(0, self.stats.pending)})
