"""Which search answer a click was on: query ids answered by this process recently (in memory), older or
another replica's from the query log in MongoDB."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cachetools import TTLCache
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from pipeline.errors import StoreUnavailable

Answer = tuple[str, list[str]]  # the generation that answered, the product ids shown in order


class RecentQueries:
    def __init__(self, log: AsyncCollection[dict[str, Any]], entries: int = 20_000, ttl_s: float = 3600) -> None:
        self._log = log
        self._recent: TTLCache[str, Answer] = TTLCache(entries, ttl_s)

    def add(self, query_id: str, generation: str, shown: list[str]) -> None:
        self._recent[query_id] = (generation, shown)

    async def resolve(self, ids: Iterable[str]) -> dict[str, Answer]:
        """The answers of the ids known; an unknown id is absent."""
        wanted = set(ids)
        found = {i: self._recent[i] for i in wanted if i in self._recent}
        rest = list(wanted - set(found))
        if rest:
            try:
                async for doc in self._log.find({"query_id": {"$in": rest}, "error": None},
                                                {"query_id": 1, "generation": 1, "top_ids": 1}):  # fmt: skip
                    found[doc["query_id"]] = (str(doc.get("generation") or ""), list(doc.get("top_ids") or []))
            except PyMongoError as exc:
                raise StoreUnavailable(f"MongoDB: reading the query log: {exc}") from exc
        return found
