"""MongoDB: the record of truth for product metadata, the ingest state, and the query/error event log.

PyMongo's async client (``AsyncMongoClient``). Every operation runs under the client-side timeout
(``timeoutMS``), and every driver failure becomes StoreUnavailable, so callers decide what a dead database
means for them. Ids and filter values only ever appear as values in queries, never as operators.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.errors import BSONError
from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from pipeline.cache import ProductCache
from pipeline.errors import StoreUnavailable
from pipeline.schemas import Product

_FIELDS = tuple(Product.model_fields)
FACETS = ("category", "brand", "color")


@dataclass(frozen=True)
class IngestState:
    content_hash: str | None
    indexed_hash: str | None  # content hash whose vectors are in Qdrant; None while (re)indexing
    fingerprint: str | None  # model that made those vectors
    job: str | None = None  # the job that last wrote the product, and what that write was (added/updated),
    job_status: str | None = None  # so a resumed job counts a product it wrote before the interruption once
    source: str | None = None  # the key of the catalog source it came from (None: a file or the API)


def _to_product(doc: dict[str, Any]) -> Product:
    return Product.model_validate({"id": doc["_id"], **{k: doc[k] for k in _FIELDS if k in doc and k != "id"}})


def _state(doc: dict[str, Any]) -> IngestState:
    return IngestState(
        doc.get("content_hash"),
        doc.get("indexed_hash"),
        doc.get("fingerprint"),
        doc.get("job"),
        doc.get("job_status"),
        doc.get("source"),
    )


async def ts_index(collection: AsyncCollection[dict[str, Any]], ttl_s: int) -> None:
    """The ``ts`` index of a time-stamped collection, a TTL index when its documents expire. A changed retention
    replaces it (drop and create need only readWrite; changing it in place would need collMod, a dbAdmin right)."""
    current = (await collection.index_information()).get("ts_1")
    if current is not None and current.get("expireAfterSeconds") != (ttl_s or None):
        await collection.drop_index("ts_1")
    if ttl_s:
        await collection.create_index([("ts", ASCENDING)], name="ts_1", expireAfterSeconds=ttl_s)
    else:
        await collection.create_index([("ts", ASCENDING)], name="ts_1")


class MongoStore:
    def __init__(
        self,
        uri: str,
        database: str,
        timeout_ms: int,
        cache: ProductCache | None = None,
        credentials: tuple[str, str, str] | None = None,  # user, password, auth source
    ) -> None:
        self._products = cache or ProductCache(0, 0)
        auth: dict[str, Any] = {}
        if credentials:
            auth = dict(zip(("username", "password", "authSource"), credentials, strict=True))
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            timeoutMS=timeout_ms,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            tz_aware=True,
            **auth,
        )
        db = self._client[database]
        self.products = db["products"]
        self.events = db["events"]
        self.api_keys = db["api_keys"]
        self.write_locks = db["write_locks"]
        self.jobs = db["jobs"]
        self.sync_state = db["sync_state"]  # per catalog source: how far its last sync read
        self.shopper_events = db["shopper_events"]  # views, carts, purchases (pipeline.recommend)
        self.model_versions = db["model_versions"]  # the model registry (pipeline.lifecycle)

    async def ensure_indexes(self, events_retention_s: float = 0) -> None:
        """Indexes for the reads the stack makes; events expire after ``events_retention_s`` (0: never)."""
        try:
            for field in (*FACETS, "price"):
                await self.products.create_index([(field, ASCENDING)])
            await self.products.create_index([("indexed_hash", ASCENDING)])
            await self.products.create_index([("source", ASCENDING)], sparse=True)
            await self.products.create_index([("written_at", ASCENDING)], sparse=True)
            await self.events.create_index([("query_id", ASCENDING)], sparse=True)
            await ts_index(self.events, int(events_retention_s))
            await self.events.create_index([("kind", ASCENDING), ("ts", ASCENDING)])
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def get_products(self, ids: Sequence[str]) -> dict[str, Product]:
        """Products by id ($in; recently read ones from the cache); ids not found are absent from the result."""
        found, missing = self._products.get_many([str(i) for i in ids])
        if missing:
            try:
                docs = await self.products.find({"_id": {"$in": missing}}).to_list(None)
            except PyMongoError as exc:
                raise StoreUnavailable(f"MongoDB: {exc}") from exc
            read = {doc["_id"]: _to_product(doc) for doc in docs}
            self._products.put_many(read)
            found.update(read)
        return found

    async def get_states(self, ids: Sequence[str]) -> dict[str, IngestState]:
        try:
            docs = await self.products.find(
                {"_id": {"$in": [str(i) for i in ids]}},
                {"content_hash": 1, "indexed_hash": 1, "fingerprint": 1, "job": 1, "job_status": 1, "source": 1},
            ).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return {d["_id"]: _state(d) for d in docs}

    async def upsert_products(
        self,
        products: Sequence[tuple[Product, str]],
        job: str | None = None,
        statuses: Mapping[str, str] = {},
        source: str | None = None,
    ) -> None:
        """Write metadata with its new content hash; ``indexed_hash`` is cleared until vectors are in. A job
        records itself and each product's status (``statuses``: id → added/updated) on the products it writes;
        a ``source`` key records where they came from (kept when None)."""
        self._products.drop([p.id for p, _ in products])
        ops = []
        now = datetime.now(UTC)
        for product, content_hash in products:
            doc = product.model_dump(mode="json", exclude={"id"})
            fields = {**{k: None for k in _FIELDS if k != "id"}, **doc}
            # written_at: what a generation built meanwhile (a shadow build, a rollback) catches up on.
            written = {"job": job, "job_status": statuses.get(product.id), "written_at": now}
            if source is not None:
                written["source"] = source
            ops.append(
                UpdateOne(
                    {"_id": product.id},
                    {"$set": {**fields, "content_hash": content_hash, "indexed_hash": None, **written}},
                    upsert=True,
                )
            )
        await self._bulk(ops)
        self._products.drop([p.id for p, _ in products])  # again: a read that raced the write may have put it back

    async def mark_indexed(self, items: Sequence[tuple[str, str]], fingerprint: str) -> None:
        """Record that the vectors of (id, content hash) are in Qdrant, made by ``fingerprint``."""
        ops = [
            UpdateOne({"_id": pid, "content_hash": h}, {"$set": {"indexed_hash": h, "fingerprint": fingerprint}})
            for pid, h in items
        ]
        await self._bulk(ops)

    async def restamp(self, fingerprint: str) -> None:
        """After a switch of generation: every indexed product's vectors are now those of ``fingerprint``."""
        try:
            await self.products.update_many({"indexed_hash": {"$ne": None}}, {"$set": {"fingerprint": fingerprint}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def written_since(self, since: datetime) -> list[Product]:
        """Products written (added or changed) at or after ``since``."""
        try:
            return [_to_product(d) async for d in self.products.find({"written_at": {"$gte": since}})]
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def all_ids(self) -> set[str]:
        try:
            return {str(d["_id"]) async for d in self.products.find({}, {"_id": 1})}
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def mark_unindexed(self, ids: Sequence[str]) -> None:
        try:
            await self.products.update_many({"_id": {"$in": list(ids)}}, {"$set": {"indexed_hash": None}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def set_source(self, ids: Sequence[str], source: str | None) -> None:
        """Record that a catalog source now supplies these (unchanged) products."""
        try:
            await self.products.update_many({"_id": {"$in": list(ids)}}, {"$set": {"source": source}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def ids_from_source(self, source: str) -> set[str]:
        """Ids of the products a catalog source supplied (what a sync deletes when the source drops them)."""
        try:
            return {str(d["_id"]) async for d in self.products.find({"source": source}, {"_id": 1})}
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def delete_products(self, ids: Sequence[str]) -> int:
        self._products.drop([str(i) for i in ids])
        try:
            result = await self.products.delete_many({"_id": {"$in": [str(i) for i in ids]}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        finally:
            self._products.drop([str(i) for i in ids])
        return result.deleted_count

    async def counts_after(self, after: str | None) -> int:
        """How many products sort after ``after`` (all of them for None)."""
        query = {"_id": {"$gt": after}} if after is not None else {}
        try:
            return int(await self.products.count_documents(query))
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def iter_products(self, batch_size: int = 500, after: str | None = None) -> AsyncIterator[Product]:
        """Every product in id order (those after ``after`` only, to resume)."""
        query = {"_id": {"$gt": after}} if after is not None else {}
        try:
            async for doc in self.products.find(query, batch_size=batch_size).sort("_id", ASCENDING):
                yield _to_product(doc)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def product_states(self, ids: Sequence[str]) -> tuple[dict[str, Product], dict[str, IngestState]]:
        """Products and their ingest state in one read."""
        try:
            docs = await self.products.find({"_id": {"$in": [str(i) for i in ids]}}).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return {d["_id"]: _to_product(d) for d in docs}, {d["_id"]: _state(d) for d in docs}

    async def list_ids(self, after: str | None, limit: int) -> list[str]:
        """Product ids in ascending order, those after ``after`` (a cursor: the last id of the previous page)."""
        query = {"_id": {"$gt": after}} if after is not None else {}
        try:
            docs = await self.products.find(query, {"_id": 1}).sort("_id", ASCENDING).limit(limit).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return [str(d["_id"]) for d in docs]

    async def counts(self) -> dict[str, int]:
        try:
            total = await self.products.count_documents({})
            pending = await self.products.count_documents({"indexed_hash": None})
            events = await self.events.estimated_document_count()
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return {"products": total, "not_indexed": pending, "events": events}

    async def facets(self) -> dict[str, list[str]]:
        """Distinct values of each filterable field, for the UI's filter widgets."""
        try:
            out = {f: sorted(v for v in await self.products.distinct(f) if v) for f in FACETS}
            prices = await self.products.aggregate(
                [{"$group": {"_id": None, "lo": {"$min": "$price"}, "hi": {"$max": "$price"}}}]
            )
            bounds = await prices.to_list(1)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        if bounds and bounds[0]["lo"] is not None:
            out["price"] = [bounds[0]["lo"], bounds[0]["hi"]]
        return out

    async def insert_events(self, events: list[dict[str, Any]]) -> None:
        try:
            await self.events.insert_many(events, ordered=False)
        except (PyMongoError, BSONError) as exc:  # an event MongoDB cannot store is dropped like any other
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def _bulk(self, ops: list[UpdateOne]) -> None:
        if not ops:
            return
        try:
            await self.products.bulk_write(ops, ordered=False)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.close()
