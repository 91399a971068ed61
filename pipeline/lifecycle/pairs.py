"""Training and validation pairs: the catalog's own (a product's title and its images) and those shoppers made
(a query's text and the result they clicked; results shown above a click and skipped are that text's hard
negatives). One product in N and one query in N (a stable hash of the product id, of the query's
normalised text) are held out of training and kept for validation, so a candidate is measured on pairs it
never learned."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError

from pipeline.errors import StoreUnavailable
from pipeline.schemas import Product
from pipeline.stores.mongo import MongoStore


def held_out(key: str, every: int) -> bool:
    """Whether ``key`` (a product or query id) is in the held-out share (1 in ``every``), the same everywhere."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % every == 0


def query_key(text: str) -> str:
    """What decides whether a click is held out: its query's text, normalised, so the same text typed by many
    shoppers is all in training or all in validation."""
    return " ".join(text.lower().split())


def title_of(product: Product) -> str:
    return product.name.lower()


@dataclass(frozen=True)
class ClickPair:
    query_id: str
    text: str
    product_id: str
    rank: int | None  # where the clicked product was shown (1 = first); None: not among the results logged
    skipped: list[str] = field(default_factory=list)  # shown above it, not clicked


async def click_pairs(mongo: MongoStore, limit: int = 100_000) -> list[ClickPair]:
    """Every recorded click on a text query's result that the query log still holds, newest first."""
    try:
        clicks = (
            await mongo.shopper_events.find(
                {"type": "click", "query_id": {"$type": "string"}}, {"query_id": 1, "product_id": 1}
            )
            .sort("ts", -1)
            .limit(limit)
            .to_list(None)
        )
        ids = list({c["query_id"] for c in clicks})
        queries: dict[str, dict[str, Any]] = {}
        for first in range(0, len(ids), 10_000):
            async for q in mongo.events.find({"query_id": {"$in": ids[first : first + 10_000]}, "kind": "text"},
                                             {"query_id": 1, "query": 1, "top_ids": 1}):  # fmt: skip
                queries[q["query_id"]] = q
    except PyMongoError as exc:
        raise StoreUnavailable(f"MongoDB: reading clicks: {exc}") from exc
    clicked: dict[str, set[str]] = {}
    for c in clicks:
        clicked.setdefault(c["query_id"], set()).add(str(c["product_id"]))
    out, seen = [], set()
    for c in clicks:
        found = queries.get(c["query_id"])
        key = (c["query_id"], str(c["product_id"]))
        if found is None or key in seen or not found.get("query"):
            continue
        seen.add(key)
        shown = [str(p) for p in found.get("top_ids") or []]
        rank = shown.index(key[1]) + 1 if key[1] in shown else None
        above = shown[: rank - 1] if rank else []
        out.append(ClickPair(key[0], str(found["query"]), key[1], rank,
                             [p for p in above if p not in clicked[key[0]]]))  # fmt: skip
    return out
