"""How far each catalog source has been synced: its watermark (the largest ``updated_at`` the last successful
sync read), kept in MongoDB under the source's key, so any replica or worker continues from there.

Watermarks are the source's own values (a datetime, a date, a number, a text) and go back to it as they came:
BSON cannot hold a ``date`` or a ``Decimal``, and reads every datetime back as aware UTC, so each is stored
with what it was.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from pipeline.errors import StoreUnavailable


def dump_mark(value: Any) -> dict[str, Any] | None:
    """A watermark as BSON takes it (None stays None)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return {"v": value, "kind": "naive" if value.tzinfo is None else "aware"}
    if isinstance(value, dt.date):
        return {"v": dt.datetime.combine(value, dt.time()), "kind": "date"}
    if isinstance(value, Decimal):
        return {"v": Decimal128(value), "kind": "decimal"}
    return {"v": value, "kind": "plain"}


def load_mark(stored: dict[str, Any] | None) -> Any:
    """The watermark as the source gave it."""
    if not stored:
        return None
    value, kind = stored["v"], stored.get("kind")
    if kind == "naive":
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if kind == "date":
        return value.date()
    if kind == "decimal":
        return value.to_decimal()
    return value


def later(a: Any, b: Any) -> Any:
    """The larger of two watermarks (None is smallest); values that do not compare keep the first."""
    if a is None:
        return b
    if b is None:
        return a
    try:
        return b if b > a else a
    except TypeError:
        return a


class SyncStates:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def watermark(self, key: str) -> Any:
        try:
            doc = await self.collection.find_one({"_id": key})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return load_mark(doc.get("watermark")) if doc else None

    async def save(self, key: str, watermark: Any, job: str, described: str) -> None:
        doc = {"watermark": dump_mark(watermark), "job": job, "source": described, "synced": dt.datetime.now(dt.UTC)}
        try:
            await self.collection.update_one({"_id": key}, {"$set": doc}, upsert=True)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
