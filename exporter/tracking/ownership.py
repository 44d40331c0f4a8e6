"""The ring of replicas: which shard owns an id, and where every shard can be reached."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.tracking.shard import owner


@dataclass(frozen=True)
class Ring:
    """This replica's place among `count` shards; `urls` (one per shard) when peers are configured."""

    index: int = 0
    count: int = 1
    urls: tuple[str, ...] = ()

    @property
    def routed(self) -> bool:
        """True when ids another shard owns are handed to it (peers configured, one URL per shard)."""
        return bool(self.urls) and len(self.urls) == self.count

    @property
    def draining(self) -> bool:
        """A replica being removed (index past the count): it owns nothing and hands all it holds
        to the shards that remain, then may be stopped once its outbox is empty."""
        return self.index >= self.count

    def owner(self, job_id: str) -> int:
        return owner(job_id, self.count)

    def owns(self, job_id: str) -> bool:
        return owner(job_id, self.count) == self.index

    def url(self, shard: int) -> str:
        return self.urls[shard]
