"""A generation: one model version and the vector collection built with it, with the services that use the two.

Every request takes the stack's current generation once and runs on it from start to end, so a switch (one
attribute assignment on the event loop) never gives a request a mix: requests that started on the old one
finish on it, new ones get the new one. Each generation has its own embedding cache, so a cached query vector
of one model never meets another model's collection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cache import EmbeddingCache
from pipeline.config import Settings
from pipeline.encoders.base import Encoder
from pipeline.encoders.factory import create_encoder
from pipeline.encoders.triton import TritonEncoder
from pipeline.events import EventLog
from pipeline.image_fetch import ImageFetcher
from pipeline.lifecycle.queries import RecentQueries
from pipeline.lifecycle.registry import ModelVersion
from pipeline.product_vectors import ProductVectors
from pipeline.recommend.events import ShopperEventStore
from pipeline.recommend.service import ClickHook, RecommendService
from pipeline.search import SearchService
from pipeline.stores.mongo import MongoStore
from pipeline.stores.vectors import ModelStamp, VectorIndex


@dataclass
class Shared:
    """What every generation of a stack uses alike."""

    settings: Settings
    mongo: MongoStore
    events: EventLog
    shopper_events: ShopperEventStore
    fetcher: ImageFetcher
    recent: RecentQueries  # answers a click may name, across generations
    on_click: list[ClickHook] = field(default_factory=list)  # who hears of clicks (the service's metrics)


@dataclass
class Generation:
    version: ModelVersion
    encoder: Encoder
    index: VectorIndex
    cache: EmbeddingCache
    search: SearchService
    recommend: RecommendService
    vectors: ProductVectors  # products to vectors with this generation's model (ingestion)

    @property
    def name(self) -> str:
        return self.version.version

    @property
    def stamp(self) -> ModelStamp:
        return ModelStamp.of(self.encoder.info)

    async def aclose(self, unload: bool = False) -> None:
        """Close the collection and the encoder; ``unload``: also unload the model from Triton (a generation
        switched away from, once drained; never at shutdown, when the server's models stay for the next start)."""
        try:
            await self.index.aclose()
        finally:
            try:
                if unload and isinstance(self.encoder, TritonEncoder):
                    await self.encoder.unload_models()
            finally:
                await self.encoder.aclose()


def version_settings(settings: Settings, version: ModelVersion) -> Settings:
    """``settings`` with the version's repository as the model to load."""
    out = settings.model_copy(deep=True)
    out.encoder.model_repository = Path(version.repository)
    return out


def create_generation_index(settings: Settings, version: ModelVersion) -> VectorIndex:
    """The vector collection of ``version``: the configured one for the first (base) version; for a later one
    its own (on Edge a folder of its own under the Qdrant folder, on a server its own alias)."""
    from pipeline.stack import create_index

    if version.base:
        return create_index(settings)
    own = settings.model_copy(deep=True)
    if own.qdrant.url:
        own.qdrant.collection = f"{settings.qdrant.collection}_{version.version}"
    else:
        own.qdrant.path = settings.qdrant.path / "generations" / version.version
    return create_index(own)


async def open_generation(shared: Shared, version: ModelVersion, encoder: Encoder | None = None) -> Generation:
    """Open ``version``'s encoder (unless given) and collection (created empty, stamped with the model, when
    absent) and the services on them. Closes what it opened when a later part fails."""
    settings = shared.settings
    opened_encoder = encoder is None
    tag = None if version.base else version.version  # on Triton: the base version keeps the export's names
    encoder = encoder or await create_encoder(version_settings(settings, version), triton_tag=tag)
    index = create_generation_index(settings, version)
    try:
        await index.open(ModelStamp.of(encoder.info))
    except BaseException:
        await asyncio.gather(index.aclose(), encoder.aclose() if opened_encoder else asyncio.sleep(0),
                             return_exceptions=True)  # fmt: skip
        raise
    cache = EmbeddingCache(settings.cache.max_entries, settings.cache.ttl_s)
    search = SearchService(encoder, index, shared.mongo, cache, shared.events, settings.search, settings.limits,
                           settings.qdrant.overfetch, generation=version.version, recent=shared.recent)  # fmt: skip
    recommend = RecommendService(index, shared.mongo, shared.shopper_events, encoder, settings.recommend,
                                 settings.search, settings.qdrant.overfetch, shared.recent,
                                 shared.on_click)  # fmt: skip
    return Generation(version, encoder, index, cache, search, recommend, ProductVectors(encoder, shared.fetcher))
