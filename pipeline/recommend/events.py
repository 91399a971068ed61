"""Shopper events (a view, a click, an add to cart, a purchase) as sent and as stored in MongoDB.

Stored in ``shopper_events`` with an index per buyer and time (a buyer's recent events are one index read)
and a TTL index (``PIPELINE__RECOMMEND__RETENTION_DAYS``). An event with an id is stored once: sending the
same batch again changes nothing. Ids and buyer ids are values, never field names, so ``$`` and ``.`` in them
are just characters.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pymongo import ASCENDING, DESCENDING, InsertOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, PyMongoError

from pipeline.errors import StoreUnavailable
from pipeline.schemas import ProductId
from pipeline.stores.mongo import ts_index

BuyerId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


class ShopperEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    buyer_id: BuyerId | None = Field(default=None, description="Who (optional only for a click naming a query_id)")
    product_id: ProductId
    type: EventType
    ts: dt.datetime | None = Field(default=None, description="When it happened (default: when received)")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="Makes sending it again a no-op"
    )
    query_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="A click on a search result: the answer's query_id (a training pair for the model, and a "
        "click-through for the generation that answered); an unknown one is ignored and counted",
    )

    @model_validator(mode="after")
    def _who(self) -> ShopperEvent:
        if self.buyer_id is None and self.query_id is None:
            raise ValueError("buyer_id is required (it may be left out only for a click naming a query_id)")
        if self.query_id is not None and self.type is not EventType.CLICK:
            raise ValueError("query_id goes with type click")
        return self


class Interaction(BaseModel):
    """One step of an anonymous session (nothing is stored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    type: EventType = EventType.VIEW
    ts: dt.datetime | None = None


def aware(ts: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """A timestamp in UTC (a naive one is taken as UTC); none means now."""
    if ts is None:
        return now
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


class ShopperEventStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def ensure_indexes(self, retention_days: float) -> None:
        try:
            await self.collection.create_index([("buyer_id", ASCENDING), ("ts", DESCENDING)])
            # Covers a buyer's exclusions (distinct products per event type) without reading their events.
            await self.collection.create_index(
                [("buyer_id", ASCENDING), ("type", ASCENDING), ("product_id", ASCENDING)]
            )
            await self.collection.create_index([("product_id", ASCENDING)])
            await ts_index(self.collection, int(retention_days * 86400))
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def insert(
        self, events: Sequence[tuple[ShopperEvent, dt.datetime]], extra: Mapping[int, dict[str, Any]] | None = None
    ) -> tuple[int, int]:
        """Store events (each with its UTC time; ``extra``: more fields by position); returns (stored,
        duplicates)."""
        now = dt.datetime.now(dt.UTC)
        ops = []
        for i, (event, ts) in enumerate(events):
            doc = {"_id": event.event_id or uuid.uuid4().hex, "buyer_id": event.buyer_id,
                   "product_id": event.product_id, "type": event.type.value, "ts": ts, "received": now}  # fmt: skip
            if event.query_id is not None:
                doc["query_id"] = event.query_id
            doc.update((extra or {}).get(i, {}))
            ops.append(InsertOne(doc))
        if not ops:
            return 0, 0
        try:
            result = await self.collection.bulk_write(ops, ordered=False)
            return result.inserted_count, 0
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [e for e in errors if e.get("code") != 11000]
            if others:
                raise StoreUnavailable(f"MongoDB: {others[0].get('errmsg')}") from exc
            return int(exc.details.get("nInserted", 0)), len(errors)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def recent(self, buyer_id: str, limit: int) -> list[Interaction]:
        """A buyer's most recent events, newest first."""
        try:
            cursor = self.collection.find({"buyer_id": buyer_id}, {"product_id": 1, "type": 1, "ts": 1})
            docs = await cursor.sort("ts", DESCENDING).limit(limit).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return [Interaction(product_id=d["product_id"], type=d["type"], ts=d["ts"]) for d in docs]

    async def products_of(self, buyer_id: str, types: Sequence[EventType] | None = None) -> set[str]:
        """Every product a buyer had an event with (of these types), however old: what an exclusion must cover,
        where the buyer vector reads only the most recent events."""
        query: dict[str, Any] = {"buyer_id": buyer_id}
        if types is not None:
            query["type"] = {"$in": [t.value for t in types]}
        try:
            return {str(p) for p in await self.collection.distinct("product_id", query)}
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def popular(self, weights: Mapping[str, float], since: dt.datetime, limit: int) -> list[tuple[str, float]]:
        """Products by weighted event count since ``since``, most popular first."""
        branches = [{"case": {"$eq": ["$type", t]}, "then": float(w)} for t, w in weights.items()]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"ts": {"$gte": since}}},
            {"$group": {"_id": "$product_id", "score": {"$sum": {"$switch": {"branches": branches, "default": 0.0}}}}},
            {"$match": {"score": {"$gt": 0}}},
            {"$sort": {"score": -1, "_id": 1}},
            {"$limit": limit},
        ]
        try:
            docs = await (await self.collection.aggregate(pipeline)).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return [(str(d["_id"]), float(d["score"])) for d in docs]
