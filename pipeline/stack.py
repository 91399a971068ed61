"""The composition root: every service built from one Settings, opened and closed as one async context.

The faces (CLI, Streamlit, later an HTTP API) use only this. With no server URLs set, everything is
embedded: onnxruntime in-process, Qdrant Edge under ``./data/qdrant``, and a mongod started on loopback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.cache import EmbeddingCache, ProductCache
from pipeline.config import Settings
from pipeline.encoders.base import Encoder
from pipeline.encoders.factory import create_encoder
from pipeline.errors import StoreUnavailable
from pipeline.events import EventLog
from pipeline.ingest import IngestService
from pipeline.jobs.store import JobStore
from pipeline.recommend.events import ShopperEventStore
from pipeline.recommend.service import RecommendService
from pipeline.search import SearchService
from pipeline.stores.index_config import IndexSpec, memory_estimate
from pipeline.stores.keys import KeyStore
from pipeline.stores.mongo import MongoStore
from pipeline.stores.mongod import ManagedMongod
from pipeline.stores.vectors import IndexInfo, ModelStamp, VectorIndex
from pipeline.stores.write_lock import WriteLock
from pipeline.types import Modality

log = logging.getLogger(__name__)


@dataclass
class Stack:
    settings: Settings
    encoder: Encoder
    index: VectorIndex
    mongo: MongoStore
    cache: EmbeddingCache
    events: EventLog
    search: SearchService
    ingest: IngestService
    keys: KeyStore
    mongod: ManagedMongod | None
    jobs: JobStore
    recommend: RecommendService

    async def status(self, deep: bool = True) -> dict[str, Any]:
        """Counts in MongoDB and Qdrant, the model, cache and event-log figures, health; with ``deep``, also
        whether the two stores hold the same product ids (reads every id: for the CLI, not for a page that
        refreshes every few seconds)."""
        info = self.encoder.info
        out: dict[str, Any] = {
            "encoder": {
                "backend": info.backend,
                "model": info.model,
                "precision": str(info.precision),
                "dim": info.dim,
                "fingerprint": info.fingerprint,
            },
            "cache": vars(self.cache.stats()) | {"hit_rate": round(self.cache.stats().hit_rate, 3)},
            "events": {"written": self.events.written, "dropped": self.events.dropped, "pending": self.events.pending},
        }
        mongo_ids: set[str] | None = None
        try:
            await self.mongo.ping()
            out["mongo"] = {
                "healthy": True,
                **await self.mongo.counts(),
                "managed": self.mongod.uri if self.mongod else None,
            }
            if deep:
                mongo_ids = {p.id async for p in self.mongo.iter_products()}
        except StoreUnavailable as exc:
            out["mongo"] = {"healthy": False, "error": str(exc)}
        try:
            index = await self.index.info()
            qdrant_ids = await self.index.product_ids() if deep else None
            stamp = index.stamp
            out["qdrant"] = {
                "healthy": True,
                "backend": index.backend,
                "collection": index.collection,
                "points": index.points,
                "fingerprint": stamp.fingerprint if stamp else None,
                "model_matches": stamp is None or stamp.fingerprint == info.fingerprint,
                "index": index_status(index, self.settings.index.spec(), len(Modality), info.dim),
            }
            if qdrant_ids is not None:
                out["qdrant"]["products"] = len(qdrant_ids)
            if mongo_ids is not None and qdrant_ids is not None:
                out["in_agreement"] = mongo_ids == qdrant_ids
                out["only_in_mongo"] = sorted(mongo_ids - qdrant_ids)[:20]
                out["only_in_qdrant"] = sorted(qdrant_ids - mongo_ids)[:20]
        except StoreUnavailable as exc:
            out["qdrant"] = {"healthy": False, "error": str(exc)}
        return out


def index_status(index: IndexInfo, configured: IndexSpec, spaces: int, dim: int) -> dict[str, Any]:
    """What the live collection is built with beside what the settings ask for (a difference applies through
    a re-index), how much of it is in graphs, and an estimate of its vectors' memory."""
    built = index.index
    dim = index.stamp.dim if index.stamp else dim
    note = None
    if built != configured:
        note = "the settings differ from the live collection's: run `python -m pipeline reindex` to apply them"
    elif (index.backend == "qdrant-edge" and built is not None
          and index.points - (index.indexed_vectors or 0) / spaces >= built.exact_below):  # fmt: skip
        note = ("over exact_below points written since the last re-index are scanned, not in a graph (Qdrant "
                "Edge builds graphs in a re-index): run `python -m pipeline reindex` after a bulk ingest")  # fmt: skip
    return {
        "configured": configured.as_record(),
        "collection": built.as_record() if built else None,
        "uses": built.describe() if built else "Qdrant's defaults (created before index settings)",
        "note": note,
        "indexed_vectors": index.indexed_vectors,
        "vectors": index.points * spaces,
        "memory_estimate": memory_estimate(index.points, spaces, dim, built),
    }


def create_index(settings: Settings) -> VectorIndex:
    q = settings.qdrant
    if q.url:
        from pipeline.stores.qdrant_server import ServerIndex

        key = q.api_key.get_secret_value() if q.api_key else None
        return ServerIndex(q.url, q.collection, api_key=key, timeout_s=q.timeout_s, shard_number=q.shard_number,
                           replication_factor=q.replication_factor, spec=settings.index.spec())  # fmt: skip
    from pipeline.stores.qdrant_edge import EdgeIndex

    return EdgeIndex(q.path, q.collection, settings.index.spec())


async def open_mongo(
    settings: Settings, exit_stack: contextlib.AsyncExitStack
) -> tuple[MongoStore, ManagedMongod | None]:
    """The MongoDB store of these settings: the server at ``mongo.uri``, or the managed mongod (started, or
    found running beside its data). Closed with ``exit_stack``."""
    mongod = None
    uri = settings.mongo.uri.get_secret_value() if settings.mongo.uri else None
    if uri is None:
        mongod = ManagedMongod(settings.mongo.data_dir)
        uri = await mongod.start()
        exit_stack.push_async_callback(mongod.stop)
    cache = ProductCache(settings.cache.max_entries, settings.cache.product_ttl_s)
    m = settings.mongo
    credentials = None
    if m.username:
        password = m.password.get_secret_value() if m.password else ""
        credentials = (m.username, password, m.auth_source or m.database)
    mongo = MongoStore(uri, m.database, m.timeout_ms, cache, credentials)
    exit_stack.push_async_callback(mongo.aclose)
    return mongo, mongod


@contextlib.asynccontextmanager
async def open_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Build and open every part; close them all, in reverse, however the block ends."""
    async with contextlib.AsyncExitStack() as exit_stack:
        encoder = await create_encoder(settings)
        exit_stack.push_async_callback(encoder.aclose)

        mongo, mongod = await open_mongo(settings, exit_stack)
        keys = KeyStore(mongo.api_keys)
        jobs = JobStore(mongo.jobs)
        shopper_events = ShopperEventStore(mongo.shopper_events)
        try:
            await mongo.ensure_indexes(settings.events.retention_days * 86400)
            await keys.ensure_indexes()
            await jobs.ensure_indexes()
            await shopper_events.ensure_indexes(settings.recommend.retention_days)
        except StoreUnavailable as exc:  # searches still answer without metadata; say so once
            log.warning("MongoDB is not reachable at start-up: %s", exc)

        index = create_index(settings)
        exit_stack.push_async_callback(index.aclose)
        info = encoder.info
        await index.open(ModelStamp(info.fingerprint, info.dim, info.model))

        ev = settings.events
        events = EventLog(mongo.insert_events, ev.queue_size, ev.batch_size, ev.flush_interval_s)
        events.start()
        exit_stack.push_async_callback(functools.partial(events.aclose, settings.events.flush_timeout_s))
        http = httpx.AsyncClient(timeout=settings.ingest.http_timeout_s, follow_redirects=True)
        exit_stack.push_async_callback(http.aclose)

        cache = EmbeddingCache(settings.cache.max_entries, settings.cache.ttl_s)
        search = SearchService(
            encoder, index, mongo, cache, events, settings.search, settings.limits, settings.qdrant.overfetch
        )
        lock = WriteLock(mongo.write_locks, settings.qdrant.collection)
        ingest = IngestService(encoder, index, mongo, http, lock, settings.ingest, settings.limits)
        recommend = RecommendService(index, mongo, shopper_events, encoder, settings.recommend, settings.search,
                                     settings.qdrant.overfetch)  # fmt: skip
        yield Stack(settings, encoder, index, mongo, cache, events, search, ingest, keys, mongod, jobs, recommend)
