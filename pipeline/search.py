"""The search service: a text, an image or a product id in; ranked products with metadata out.

Flow: embed the query (through the LRU cache) → search the stored vector spaces the query kind uses
(``WEIGHTS``), in one batch → best point per product → fusion (``settings.fusion``; a hit's ``score`` is the
fused score the order follows) → metadata from MongoDB → an event to the log.
A MongoDB failure degrades the answer (ids and scores, ``metadata_missing``); a Qdrant failure is an error.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cache import EmbeddingCache, cache_key
from pipeline.config import LimitsSettings, SearchSettings
from pipeline.encoders.base import Encoder
from pipeline.errors import InvalidInput, NotFound, PipelineError, StoreUnavailable
from pipeline.events import EventLog
from pipeline.fusion import Fusion, best_per_product, fuse
from pipeline.lifecycle.queries import RecentQueries
from pipeline.preprocess import check_text
from pipeline.schemas import MAX_IMAGES, Hit, QueryKind, SearchFilters, SearchResponse
from pipeline.stores.mongo import MongoStore
from pipeline.stores.vectors import EXCLUDE_FEW, PointHit, SpaceQuery, VectorIndex
from pipeline.text_towers import TextTower
from pipeline.types import Modality

# Up to EXCLUDE_FEW products left out of a search are dropped after it, from this many extra points (see _search):
# one point per image at most, so "more like this" never needs the filtered search.
EXCLUDE_SLACK = MAX_IMAGES

# Which stored spaces a query searches, and their weight in the fusion. Text queries weigh
# CLIP's cross-modal match (query text vs product photos) and title similarity alike. Photo queries search
# the photos only: fusing in the weak photo-vs-title space let neighbours outrank an exact match of the
# shopper's photo. "More like this" adds the product's title at half weight (the product itself is excluded).
WEIGHTS = {
    QueryKind.TEXT: {Modality.IMAGE: 1.0, Modality.TEXT: 1.0},
    QueryKind.IMAGE: {Modality.IMAGE: 1.0},
    QueryKind.PRODUCT: {Modality.IMAGE: 1.0, Modality.TEXT: 0.5},
}


@dataclass
class _Shared:
    """One query's encoding in flight and how many callers wait for it."""

    task: asyncio.Future[np.ndarray]
    waiters: int = 0


class SearchService:
    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        mongo: MongoStore,
        cache: EmbeddingCache,
        events: EventLog,
        settings: SearchSettings,
        limits: LimitsSettings,
        overfetch: int,
        generation: str = "",
        recent: RecentQueries | None = None,
    ) -> None:
        self.encoder, self.index, self.mongo, self.cache, self.events = encoder, index, mongo, cache, events
        self.generation = generation  # the model version whose generation this serves (named in every answer)
        self.recent = recent  # answers a click may name
        self.settings, self.limits, self.overfetch = settings, limits, overfetch
        # A query (or a rank candidate) is held to the query limit, not the general text limit.
        self.query_limits = limits.model_copy(update={"max_text_chars": limits.max_query_chars})
        self._inflight: dict[str, _Shared] = {}  # query key -> its encoding, shared by the callers waiting

    async def search_text(
        self, text: str, top_k: int | None = None, filters: SearchFilters | None = None, min_score: float | None = None
    ) -> SearchResponse:
        """Raises InvalidInput for an empty text or one over ``limits.max_query_chars``."""
        limits = self.query_limits
        return await self._run(
            QueryKind.TEXT,
            text[:200],
            top_k,
            filters,
            min_score,
            lambda: self._embed(Modality.TEXT, check_text(text, limits, name="query")),
        )

    async def search_image(
        self,
        image: bytes,
        top_k: int | None = None,
        filters: SearchFilters | None = None,
        min_score: float | None = None,
    ) -> SearchResponse:
        """Raises InvalidInput for an unreadable, empty or oversized image."""
        digest = hashlib.sha256(image).hexdigest()[:16]

        async def embed() -> tuple[dict[Modality, np.ndarray], bool]:
            try:
                return await self._embed(Modality.IMAGE, image)
            except InvalidInput as exc:  # the encoder numbers its inputs; here there is one, the shopper's
                raise InvalidInput(str(exc).replace("image 0:", "query image:", 1)) from exc

        return await self._run(QueryKind.IMAGE, f"sha256:{digest}", top_k, filters, min_score, embed)

    async def search_product(
        self,
        product_id: str,
        top_k: int | None = None,
        filters: SearchFilters | None = None,
        min_score: float | None = None,
    ) -> SearchResponse:
        """ "More like this": the product's stored vectors, no encoding; the product itself is left out.

        Raises NotFound for an id that is not in the index.
        """
        return await self._run(
            QueryKind.PRODUCT,
            product_id,
            top_k,
            filters,
            min_score,
            lambda: self._stored(product_id),
            exclude=[product_id],
        )

    # --- internals -------------------------------------------------------------------------------------------

    async def _search(
        self,
        spaces: list[SpaceQuery],
        filters: SearchFilters,
        limit: int,
        min_score: float | None,
        exclude: Sequence[str],
    ) -> list[list[PointHit]]:
        """``index.search``, leaving ``exclude`` out. A few products (the product itself, for "more like this")
        are dropped here from ``EXCLUDE_SLACK`` more points rather than by a filter: a must-not filter makes
        the engine plan a filtered search (on Qdrant Edge, a scan) for a condition that removes a handful of
        points. The answer is the same: the best ``limit`` points that are not excluded, or the filtered search
        when more than the slack had to go."""
        if not exclude or len(exclude) > EXCLUDE_FEW:
            return await self.index.search(spaces, filters, limit, min_score, exclude)
        lists = await self.index.search(spaces, filters, limit + EXCLUDE_SLACK, min_score)
        gone = set(exclude)
        kept = [[h for h in hits if h.product_id not in gone] for hits in lists]
        if any(len(k) < limit and len(h) == limit + EXCLUDE_SLACK for k, h in zip(kept, lists, strict=True)):
            return await self.index.search(spaces, filters, limit, min_score, exclude)  # more than the slack went
        return [k[:limit] for k in kept]

    async def _embed(self, modality: Modality, payload: str | bytes) -> tuple[dict[Modality, np.ndarray], bool]:
        info = self.encoder.info
        tower = self.encoder.tower_for(payload) if isinstance(payload, str) else TextTower.CLIP
        # A query embedded by the multilingual tower is that tower's vector: its own cache entry.
        fingerprint = info.multilingual if tower == TextTower.MULTILINGUAL and info.multilingual else info.fingerprint
        key = cache_key(modality, fingerprint, info.precision, payload)
        vector = self.cache.get(key)
        if vector is not None:
            return {m: vector for m in Modality}, True
        entry = self._inflight.get(key)
        shared = entry is not None  # the same query is being encoded right now: share its result
        if entry is None:
            # A task of its own, so that a caller going away (a client that disconnects, a deadline) cancels
            # only its wait, never the encoding others are waiting for; the last one going away cancels it.
            entry = _Shared(asyncio.ensure_future(self._encode_one(modality, payload, key, tower)))
            entry.task.add_done_callback(functools.partial(self._forget, key, entry))
            self._inflight[key] = entry
        entry.waiters += 1
        try:
            vector = await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                entry.task.cancel()
                if self._inflight.get(key) is entry:  # a caller arriving now starts afresh, not on a cancelled task
                    del self._inflight[key]
        return {m: vector for m in Modality}, shared

    def _forget(self, key: str, entry: _Shared, task: asyncio.Future[np.ndarray]) -> None:
        if self._inflight.get(key) is entry:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # an error nobody awaits any more is not news

    async def _encode_one(self, modality: Modality, payload: str | bytes, key: str, tower: TextTower) -> np.ndarray:
        if modality is Modality.TEXT:
            assert isinstance(payload, str)
            vector = (await self.encoder.encode_texts([payload], tower))[0]
        else:
            assert isinstance(payload, bytes)
            vector = (await self.encoder.encode_images([payload]))[0]
        self.cache.put(key, vector)
        return vector

    async def _stored(self, product_id: str) -> tuple[dict[Modality, np.ndarray], None]:
        stored = await self.index.product_vectors(product_id)
        if not stored:
            raise NotFound(f"unknown product id {product_id!r}")
        image = np.mean(stored[Modality.IMAGE], axis=0)
        return {Modality.IMAGE: image / np.linalg.norm(image), Modality.TEXT: stored[Modality.TEXT][0]}, None

    async def _run(
        self,
        kind: QueryKind,
        query: str,
        top_k: int | None,
        filters: SearchFilters | None,
        min_score: float | None,
        embed: Callable[[], Awaitable[tuple[dict[Modality, np.ndarray], bool | None]]],
        exclude: Sequence[str] = (),
    ) -> SearchResponse:
        filters = filters or SearchFilters()
        timings: dict[str, float] = {}
        query_id = uuid.uuid4().hex
        event: dict[str, Any] = {
            "query_id": query_id,  # a click names it (POST /v1/events): a training pair, a click-through
            "generation": self.generation,
            "kind": str(kind),
            "query": query,
            "filters": filters.model_dump(exclude_none=True),
            "model": self.encoder.info.model,
            "precision": str(self.encoder.info.precision),
        }
        start = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = round((now - clock) * 1000, 3)
            clock = now

        try:
            k = self.settings.top_k(top_k)
            vectors, cache_hit = await embed()
            lap("embed")
            weights = WEIGHTS[kind]
            spaces = [SpaceQuery(vectors[m], m) for m in weights]
            ranked_lists = await self._search(spaces, filters, k * self.overfetch, min_score, exclude)
            lap("search")
            ranked = fuse(
                [best_per_product(r) for r in ranked_lists],
                list(weights.values()),
                k,
                Fusion(self.settings.fusion),
                self.settings.rrf_k,
            )
            lap("fusion")
            products, metadata_missing = {}, False
            if ranked:
                try:
                    products = await self.mongo.get_products([r.product_id for r in ranked])
                except StoreUnavailable as exc:
                    event["metadata_error"] = str(exc)[:300]
                metadata_missing = len(products) < len(ranked)
            lap("metadata")
        except PipelineError as exc:
            event.update(
                error=f"{type(exc).__name__}: {exc}"[:500],
                timings_ms=timings,
                total_ms=round((time.perf_counter() - start) * 1000, 3),
            )
            self.events.record(event)
            raise
        hits = [
            Hit(
                product_id=r.product_id,
                score=r.score,
                similarity=r.similarity,
                matched=r.matched,
                image_index=r.image_index,
                product=products.get(r.product_id),
            )
            for r in ranked
        ]
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        event.update(
            timings_ms=timings,
            cache_hit=cache_hit,
            top_ids=[h.product_id for h in hits],
            top_similarity=hits[0].similarity if hits else None,
            metadata_missing=metadata_missing,
            error=None,
        )
        self.events.record(event)
        if self.recent is not None:
            self.recent.add(query_id, self.generation, event["top_ids"][:50])  # a click further down: rank unknown
        return SearchResponse(
            kind=kind,
            hits=hits,
            metadata_missing=metadata_missing,
            cache_hit=cache_hit,
            timings_ms=timings,
            model=self.encoder.info.model,
            generation=self.generation,
            query_id=query_id,
        )
