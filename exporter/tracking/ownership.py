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
        """True when ids another shard owns are handed to it (peers configured, several shards)."""
        return self.count > 1 and len(self.urls) == self.count

    def owner(self, job_id: str) -> int:
        return owner(job_id, self.count)

    def owns(self, job_id: str) -> bool:
        return self.count <= 1 or owner(job_id, self.count) == self.index

    def url(self, shard: int) -> str:
        return self.urls[shard]
