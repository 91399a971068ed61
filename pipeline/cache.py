"""The query-embedding cache: LRU with a TTL, bounded by entries, with hit/miss counters.

Keys hash the modality, the model fingerprint, the precision and the input (normalised text, or the image's
bytes), so a new model or precision never reads another's vectors. Used from the event loop only.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import TTLCache

from pipeline.types import Modality, Precision


def normalise_text(text: str) -> str:
    """Texts that CLIP tokenises identically share an entry: NFC, collapsed whitespace, lower case."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def cache_key(modality: Modality, fingerprint: str, precision: Precision, payload: str | bytes) -> str:
    data = normalise_text(payload).encode() if isinstance(payload, str) else payload
    head = f"{modality}\0{fingerprint}\0{precision}\0".encode()
    return hashlib.blake2b(head + data, digest_size=20).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    max_entries: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class EmbeddingCache:
    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max = max_entries
        self._cache: TTLCache[str, np.ndarray] | None = TTLCache(max_entries, ttl_s) if max_entries else None
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        vector = self._cache.get(key) if self._cache is not None else None
        if vector is None:
            self.misses += 1
        else:
            self.hits += 1
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self._cache is not None:
            vector = np.array(vector, dtype=np.float32, copy=True)
            vector.setflags(write=False)  # shared between callers: nobody may change it
            self._cache[key] = vector

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def stats(self) -> CacheStats:
        return CacheStats(len(self._cache) if self._cache is not None else 0, self._max, self.hits, self.misses)


class ProductCache:
    """Product metadata by id, LRU with a TTL: a query's top hits are read from MongoDB at most once per TTL.

    The store that owns it drops an id on every write through it, so within one process a change is seen at
    once; another process's writes (a second service replica on the same MongoDB) are seen within the TTL.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._cache: TTLCache[str, Any] | None = TTLCache(max_entries, ttl_s) if max_entries and ttl_s else None

    def get_many(self, ids: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """(found, missing ids)."""
        if self._cache is None:
            return {}, list(ids)
        found = {i: p for i in ids if (p := self._cache.get(i)) is not None}
        return found, [i for i in ids if i not in found]

    def put_many(self, items: dict[str, Any]) -> None:
        if self._cache is not None:
            self._cache.update(items)

    def drop(self, ids: Sequence[str]) -> None:
        if self._cache is not None:
            for i in ids:
                self._cache.pop(i, None)
