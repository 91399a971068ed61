"""The composition root: every service built from one Settings, opened and closed as one async context.

The faces (CLI, Streamlit, later an HTTP API) use only this. With no server URLs set, everything is
embedded: onnxruntime in-process, Qdrant Edge under ``./data/qdrant``, and a mongod started on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.cache import EmbeddingCache, ProductCache
from pipeline.config import Settings
from pipeline.encoders.base import Encoder
from pipeline.errors import PipelineError, StoreUnavailable
from pipeline.events import EventLog
from pipeline.image_fetch import ImageFetcher
from pipeline.ingest import IngestService
from pipeline.jobs.store import JobStore
from pipeline.lifecycle.generation import Generation, Shared, open_generation
from pipeline.lifecycle.queries import RecentQueries
from pipeline.lifecycle.registry import ModelRegistry, ModelVersion, checkpoint_of
from pipeline.manifest import load_manifest
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
    shared: Shared
    gen: Generation  # the current generation: read it once per request (the properties below do)
    ingest: IngestService
    keys: KeyStore
    mongod: ManagedMongod | None
    jobs: JobStore
    registry: ModelRegistry
    generations: dict[str, Generation] = field(default_factory=dict)  # open ones, by version
    _switching: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _opening: set[str] = field(default_factory=set)  # generations being opened (see _close_later)

    @property
    def mongo(self) -> MongoStore:
        return self.shared.mongo

    @property
    def events(self) -> EventLog:
        return self.shared.events

    @property
    def encoder(self) -> Encoder:
        return self.gen.encoder

    @property
    def index(self) -> VectorIndex:
        return self.gen.index

    @property
    def cache(self) -> EmbeddingCache:
        return self.gen.cache

    @property
    def search(self) -> SearchService:
        return self.gen.search

    @property
    def recommend(self) -> RecommendService:
        return self.gen.recommend

    # --- generations -------------------------------------------------------------------------------------

    async def open_version(self, version: ModelVersion) -> Generation:
        """``version``'s generation, opened once per process (its collection is created empty when absent)."""
        gen = self.generations.get(version.version)
        if gen is not None and gen.encoder.info.fingerprint != version.fingerprint and gen is not self.gen:
            await self.release(gen)  # its files were replaced (a re-export in place): open them again
            gen = None
        if gen is None:
            self._opening.add(version.version)  # its models stay loaded though an older twin drains meanwhile
            try:
                gen = await open_generation(self.shared, version)
            finally:
                self._opening.discard(version.version)
            self.generations[version.version] = gen
        gen.version = version
        return gen

    def switch(self, gen: Generation) -> None:
        """Serve ``gen`` from now on (the caller holds ``switching``). The previous generation stays open for a
        rollback; any older one is closed once requests that started on it are done. On Triton the previous one
        is closed too and its models unloaded from the server (a GPU holds one generation at rest; a rollback
        loads it again)."""
        previous, self.gen = self.gen, gen
        keep = {gen.name} if self.settings.triton.url else {gen.name, previous.name}
        for name in [n for n in self.generations if n not in keep]:
            old = self.generations.pop(name)
            task = asyncio.create_task(self._close_later(old), name=f"close generation {name}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        log.info("serving generation %s (%s)", gen.name, gen.encoder.info.model)

    async def release(self, gen: Generation) -> None:
        """Close a generation this stack does not serve (after a failed activation, or a retirement)."""
        if gen is self.gen:
            return
        if self.generations.get(gen.name) is gen:
            del self.generations[gen.name]
        try:
            await gen.aclose(unload=True)  # on Triton: a refused candidate's models do not stay on the GPU
        except PipelineError as exc:
            log.warning("closing generation %s: %s", gen.name, exc)

    async def _close_later(self, gen: Generation) -> None:
        drained = False
        try:
            await asyncio.sleep(self.settings.models.drain_s)
            drained = True
        finally:  # at shutdown too (cancelled): its model and its collection's lock are let go
            try:  # unloaded unless it was opened again meanwhile (a quick rollback)
                reopened = gen.name in self.generations or gen.name in self._opening
                await gen.aclose(unload=drained and not reopened)
            except PipelineError as exc:
                log.warning("closing generation %s: %s", gen.name, exc)

    @property
    def switching(self) -> asyncio.Lock:
        """Held across a switch, and by a follower reading which generation is active."""
        return self._switching

    async def follow(self, generation: str | None = None) -> None:
        """Serve the active generation when another process switched it: ``generation`` as the write lock
        records it (a writer, under the lock), or, with none, as the registry says (the service's poll)."""
        if generation is not None and generation == self.gen.name:
            return
        async with self._switching:
            name = generation or await self.registry.active_version()
            if name is None or name == self.gen.name:
                return
            self.switch(await self.open_version(await self.registry.get(name)))

    async def aclose_generations(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(g.aclose() for g in self.generations.values()), return_exceptions=True)
        self.generations.clear()

    async def status(self, deep: bool = True) -> dict[str, Any]:
        """Counts in MongoDB and Qdrant, the model, cache and event-log figures, health; with ``deep``, also
        whether the two stores hold the same product ids (reads every id: for the CLI, not for a page that
        refreshes every few seconds)."""
        gen = self.gen
        info = gen.encoder.info
        out: dict[str, Any] = {
            "encoder": {
                "backend": info.backend,
                "model": info.model,
                "precision": str(info.precision),
                "dim": info.dim,
                "fingerprint": info.fingerprint,
                "titles": info.titles,  # the tower that embeds product titles ("clip" or the multilingual's)
            },
            "generation": gen.name,
            "cache": vars(gen.cache.stats()) | {"hit_rate": round(gen.cache.stats().hit_rate, 3)},
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
            index = await gen.index.info()
            qdrant_ids = await gen.index.product_ids() if deep else None
            stamp = index.stamp
            out["qdrant"] = {
                "healthy": True,
                "backend": index.backend,
                "collection": index.collection,
                "points": index.points,
                "fingerprint": stamp.fingerprint if stamp else None,
                "titles": stamp.titles if stamp else None,
                "model_matches": stamp is None or stamp.matches(ModelStamp.of(info)),
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
    elif index.graph_due(spaces):
        note = ("over exact_below points written since the last re-index are scanned, not in a graph (Qdrant "
                "Edge builds graphs in a re-index, and bulk jobs end with one unless BUILD_AFTER_BULK is off): "
                "run `python -m pipeline reindex`")  # fmt: skip
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
        mongo, mongod = await open_mongo(settings, exit_stack)
        keys = KeyStore(mongo.api_keys)
        jobs = JobStore(mongo.jobs)
        shopper_events = ShopperEventStore(mongo.shopper_events)
        registry = ModelRegistry(mongo.model_versions)
        try:
            await mongo.ensure_indexes(settings.events.retention_days * 86400)
            await keys.ensure_indexes()
            await jobs.ensure_indexes()
            await shopper_events.ensure_indexes(settings.recommend.retention_days)
        except StoreUnavailable as exc:  # searches still answer without metadata; say so once
            log.warning("MongoDB is not reachable at start-up: %s", exc)
        active = await active_version(settings, registry)

        ev = settings.events
        events = EventLog(mongo.insert_events, ev.queue_size, ev.batch_size, ev.flush_interval_s)
        events.start()
        exit_stack.push_async_callback(functools.partial(events.aclose, settings.events.flush_timeout_s))
        http = httpx.AsyncClient(timeout=settings.ingest.http_timeout_s, follow_redirects=True)
        exit_stack.push_async_callback(http.aclose)
        fetcher = ImageFetcher(http, settings.ingest, settings.limits)
        shared = Shared(settings, mongo, events, shopper_events, fetcher, RecentQueries(mongo.events))

        gen = await open_generation(shared, active)
        lock = WriteLock(mongo.write_locks, settings.qdrant.collection)
        holder: list[Stack] = []
        ingest = IngestService(lambda: holder[0].gen, mongo, http, fetcher, lock, settings.ingest, settings.limits,
                               follow=lambda name: holder[0].follow(name))  # fmt: skip
        stack = Stack(settings, shared, gen, ingest, keys, mongod, jobs, registry, {gen.name: gen})
        holder.append(stack)
        exit_stack.push_async_callback(stack.aclose_generations)
        yield stack


async def active_version(settings: Settings, registry: ModelRegistry) -> ModelVersion:
    """The version to serve: the registry's active one (the configured repository registered as the first
    version when the registry is empty). With MongoDB down at start-up, the configured repository with the
    configured collection (the first generation; the service follows the registry once MongoDB answers)."""
    repository = await asyncio.to_thread(settings.encoder.model_repository.resolve)
    manifest = await asyncio.to_thread(load_manifest, repository)
    try:
        return await registry.ensure_initial(manifest, repository, await asyncio.to_thread(checkpoint_of, manifest))
    except StoreUnavailable as exc:
        log.warning("model registry unreachable (%s): serving %s with the configured collection", exc, repository)
        return ModelVersion.of("v1", manifest, repository, None, base=True, built=True)
