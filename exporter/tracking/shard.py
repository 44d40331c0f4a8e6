"""Which replica owns an id: jump consistent hash over a stable 64-bit hash of the id.

Going from N to N+1 replicas moves only about 1/(N+1) of the ids (Lamping and Veach, 2014).
"""

from __future__ import annotations

import hashlib


def id_key(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(job_id.lower().encode(), digest_size=8).digest(), "big")


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in [0, buckets) that `key` falls in."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def owner(job_id: str, count: int) -> int:
    return 0 if count <= 1 else jump_hash(id_key(job_id), count)
