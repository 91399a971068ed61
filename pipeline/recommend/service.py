"""Recommendations: shopper events in, "recommended for you" out.

A buyer's recent events (at most ``max_events``) → the vectors of those products, read from the index in one
call → the buyer vector (``buyer.encode_buyer``) → a nearest search in the image and text spaces with the
search's filters, fused like a text query, the excluded products left out by the engine → optionally
diversified (MMR) → metadata and a reason per hit. A buyer with no usable history gets the popular products
of the last ``popular_window_days`` instead (``strategy: popular``). Buyer vectors are cached per buyer and
model; events sent through this service drop the buyer's entry at once. Products' vectors are cached per product,
content hash and model, and checked against MongoDB's ingest state on each use (``points``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from cachetools import LRUCache, TTLCache

from pipeline.config import RecommendSettings, SearchSettings
from pipeline.encoders.base import Encoder
from pipeline.errors import StoreUnavailable
from pipeline.fusion import Fusion, best_per_product, fuse
from pipeline.lifecycle.queries import RecentQueries
from pipeline.recommend.buyer import Buyer, closest_many, encode_points, mmr, product_point, reason
from pipeline.recommend.events import EventType, Interaction, ShopperEvent, ShopperEventStore, aware
from pipeline.recommend.models import EventError, EventsResult, Exclude, Recommendations, RecommendHit
from pipeline.schemas import Product, SearchFilters
from pipeline.stores.mongo import MongoStore
from pipeline.stores.vectors import SpaceQuery, VectorIndex, category_levels
from pipeline.types import Modality

ClickHook = Callable[[str, int | None], None]  # (generation that answered, rank of the clicked product or None)


def matches(product: Product, filters: SearchFilters) -> bool:
    """The search filters, applied to a product's metadata (the popular list is not an index query)."""
    if filters.category is not None and filters.category not in category_levels(product.category or ""):
        return False
    for name in ("brand", "color"):
        wanted = getattr(filters, name)
        if wanted is not None and getattr(product, name) != wanted:
            return False
    price = product.price
    if filters.min_price is not None and (price is None or price < filters.min_price):
        return False
    return not (filters.max_price is not None and (price is None or price > filters.max_price))


def _joint(point: dict[Modality, np.ndarray]) -> np.ndarray:
    """Both spaces in one unit vector (a dot product of two is the mean of their per-space cosines)."""
    parts = [point[m] for m in Modality if m in point]
    return (np.concatenate(parts) / np.sqrt(len(parts))).astype(np.float32)


class RecommendService:
    def __init__(
        self,
        index: VectorIndex,
        mongo: MongoStore,
        store: ShopperEventStore,
        encoder: Encoder,
        settings: RecommendSettings,
        search: SearchSettings,
        overfetch: int,
        queries: RecentQueries | None = None,
        on_click: Sequence[ClickHook] = (),
    ) -> None:
        self.index, self.mongo, self.store, self.encoder = index, mongo, store, encoder
        self.queries, self.on_click = queries, on_click  # which answer a click was on; who hears of clicks
        self.settings, self.search, self.overfetch = settings, search, overfetch
        self._buyers: TTLCache[tuple[str, str], tuple[Buyer | None, list[Interaction]]] | None = None
        # What a stored buyer's exclusions leave out (their whole history), kept and dropped with the vector.
        self._exclusions: TTLCache[tuple[str, Exclude], set[str]] | None = None
        if settings.buyer_cache_entries and settings.buyer_cache_s:
            self._buyers = TTLCache(settings.buyer_cache_entries, settings.buyer_cache_s)
            self._exclusions = TTLCache(settings.buyer_cache_entries, settings.buyer_cache_s)
        # (model fingerprint, product id, indexed content hash) -> the product's point (see ``points``).
        self._points: LRUCache[tuple[str, str, str], dict[Modality, np.ndarray]] | None = None
        if settings.vector_cache_entries:
            self._points = LRUCache(settings.vector_cache_entries)

    # --- events ----------------------------------------------------------------------------------------------

    async def record(self, events: Sequence[ShopperEvent], shown_only: bool = False) -> EventsResult:
        """Store a batch: events naming no product are ignored and counted; ones stamped in the future, or so
        long ago that the retention setting would delete them at once, are refused with the reason."""
        now = dt.datetime.now(dt.UTC)
        limit = now + dt.timedelta(seconds=self.settings.max_future_s)
        days = self.settings.retention_days
        oldest = now - dt.timedelta(days=days) if days else None
        rejected, timely = [], []
        for i, event in enumerate(events):
            ts = aware(event.ts, now)
            if ts > limit:
                rejected.append(EventError(index=i, message=f"ts {ts.isoformat()} is in the future"))
            elif oldest is not None and ts < oldest:
                message = (f"ts {ts.isoformat()} is older than the {days:g}-day retention "
                           "(PIPELINE__RECOMMEND__RETENTION_DAYS): it would be deleted at once")  # fmt: skip
                rejected.append(EventError(index=i, message=message))
            else:
                timely.append((event, ts))
        known = await self.mongo.get_states(list({e.product_id for e, _ in timely}))
        kept = [(e, ts) for e, ts in timely if e.product_id in known]
        kept, extra, unknown_queries = await self._answers(kept, shown_only)
        stored, duplicates = await self.store.insert(kept, extra)
        if self._buyers is not None and self._exclusions is not None:
            for event, _ in kept:
                if event.buyer_id is None:
                    continue
                self._buyers.pop((event.buyer_id, self.encoder.info.fingerprint), None)
                for exclude in Exclude:
                    self._exclusions.pop((event.buyer_id, exclude), None)
        return EventsResult(accepted=stored, duplicates=duplicates,
                            unknown_products=len(timely) - len(kept) - unknown_queries,
                            unknown_queries=unknown_queries, rejected=rejected)  # fmt: skip

    async def _answers(self, events: list[tuple[ShopperEvent, dt.datetime]], shown_only: bool
                       ) -> tuple[list[tuple[ShopperEvent, dt.datetime]], dict[int, dict[str, Any]], int]:  # fmt: skip
        """Clicks on a search answer: the generation that answered and the rank of the product in it are
        stored with the click; a click naming an unknown query id (or, with ``shown_only``, a product that answer
        did not show) is ignored (and counted)."""
        ids = {e.query_id for e, _ in events if e.query_id is not None}
        if not ids:
            return events, {}, 0
        answers = await self.queries.resolve(ids) if self.queries is not None else {}
        kept: list[tuple[ShopperEvent, dt.datetime]] = []
        extra: dict[int, dict[str, Any]] = {}
        for event, ts in events:
            if event.query_id is not None:
                answer = answers.get(event.query_id)
                if answer is None:
                    continue
                generation, shown = answer
                rank = shown.index(event.product_id) + 1 if event.product_id in shown else None
                if rank is None and shown_only:
                    continue
                extra[len(kept)] = {"generation": generation, "rank": rank}
                for hook in self.on_click:
                    hook(generation, rank)
            kept.append((event, ts))
        return kept, extra, len(events) - len(kept)

    # --- buyers ----------------------------------------------------------------------------------------------

    async def points(self, ids: Sequence[str]) -> dict[str, dict[Modality, np.ndarray]]:
        """Each product's one unit vector per space (``product_point``); products the index no longer holds are
        absent. With the vector cache on, a product whose MongoDB ingest state says its indexed vectors are
        still the ones cached (same content hash, same model) is answered from memory, so only new or changed
        products are read from the index (reading and converting stored vectors is most of the cost of a
        buyer vector). Without MongoDB every product is read from the index."""
        if self._points is None or not ids:
            return {pid: product_point(v) for pid, v in (await self.index.vectors_of(ids)).items()}
        fingerprint = self.encoder.info.fingerprint
        try:
            states = await self.mongo.get_states(ids)
        except StoreUnavailable:
            states = {}
        keys = {pid: (fingerprint, pid, st.indexed_hash) for pid, st in states.items()
                if st.indexed_hash and st.fingerprint == fingerprint}  # fmt: skip
        out = {pid: point for pid, key in keys.items() if (point := self._points.get(key)) is not None}
        missing = [pid for pid in ids if pid not in out]
        if missing:
            for pid, vectors in (await self.index.vectors_of(missing)).items():
                out[pid] = product_point(vectors)
                if pid in keys:
                    self._points[keys[pid]] = out[pid]
        return out

    async def encode(self, history: Sequence[Interaction]) -> Buyer | None:
        """The buyer vector of a history, in any order: its ``max_events`` most recent events count (an event
        without a time stamp counts as now)."""
        now = dt.datetime.now(dt.UTC)
        history = sorted(history, key=lambda e: aware(e.ts, now), reverse=True)[: self.settings.max_events]
        if not history:
            return None
        points = await self.points(list(dict.fromkeys(e.product_id for e in history)))
        s = self.settings
        return encode_points(history, points, s.weights, s.half_life_days, dt.datetime.now(dt.UTC))

    async def buyer(self, buyer_id: str) -> tuple[Buyer | None, list[Interaction]]:
        """A stored buyer's vector and recent history (cached)."""
        key = (buyer_id, self.encoder.info.fingerprint)
        if self._buyers is not None and key in self._buyers:
            return self._buyers[key]
        history = await self.store.recent(buyer_id, self.settings.max_events)
        found = (await self.encode(history), history)
        if self._buyers is not None:
            self._buyers[key] = found
        return found

    async def _excluded(self, buyer_id: str | None, history: Sequence[Interaction], exclude: Exclude) -> set[str]:
        """What ``exclude`` leaves out: from a session, its interactions; from a stored buyer, the whole stored
        history (a purchase older than the ``max_events`` the vector reads is still a purchase)."""
        if exclude is Exclude.NONE:
            return set()
        types = None if exclude is Exclude.SEEN else [EventType.PURCHASE]
        mine = {e.product_id for e in history if types is None or e.type in types}
        if buyer_id is None:
            return mine
        cached = self._exclusions.get((buyer_id, exclude)) if self._exclusions is not None else None
        if cached is None:
            cached = await self.store.products_of(buyer_id, types)
            if self._exclusions is not None:
                self._exclusions[(buyer_id, exclude)] = cached
        return mine | cached

    # --- recommendations -------------------------------------------------------------------------------------

    async def for_buyer(
        self, buyer_id: str, top_k: int | None, filters: SearchFilters | None, exclude: Exclude, diversify: bool
    ) -> Recommendations:
        start = time.perf_counter()
        (buyer, _), excluded = await asyncio.gather(self.buyer(buyer_id), self._excluded(buyer_id, (), exclude))
        encoded = time.perf_counter()
        out = await self._recommend(buyer, excluded, top_k, filters, diversify)
        return out.model_copy(update=self._took(buyer_id, start, encoded, out))

    async def for_session(
        self,
        interactions: Sequence[Interaction],
        top_k: int | None,
        filters: SearchFilters | None,
        exclude: Exclude,
        diversify: bool,
    ) -> Recommendations:
        start = time.perf_counter()
        buyer = await self.encode(interactions)
        encoded = time.perf_counter()
        out = await self._recommend(buyer, await self._excluded(None, interactions, exclude), top_k, filters, diversify)
        return out.model_copy(update=self._took(None, start, encoded, out))

    @staticmethod
    def _took(buyer_id: str | None, start: float, encoded: float, out: Recommendations) -> dict[str, object]:
        now = time.perf_counter()
        timings = {"encode": round((encoded - start) * 1000, 3), **out.timings_ms}
        return {"buyer_id": buyer_id, "took_ms": round((now - start) * 1000, 3), "timings_ms": timings}

    async def _recommend(
        self,
        buyer: Buyer | None,
        excluded: set[str],
        top_k: int | None,
        filters: SearchFilters | None,
        diversify: bool,
    ) -> Recommendations:
        k, filters = self.search.top_k(top_k), filters or SearchFilters()
        if buyer is None:
            return await self._popular(k, filters, excluded)
        clock = time.perf_counter()
        n = k * 4 if diversify else k
        spaces = [SpaceQuery(buyer.spaces[m], m) for m in Modality if m in buyer.spaces]
        lists = await self.index.search(spaces, filters, n * self.overfetch, None, sorted(excluded))
        ranked = fuse([best_per_product(hits) for hits in lists], [1.0] * len(spaces), n,
                      Fusion(self.search.fusion), self.search.rrf_k)  # fmt: skip
        searched = time.perf_counter()
        ids = [r.product_id for r in ranked]
        # The candidates' vectors (for the reasons, and MMR) and the metadata (candidates and history, for the
        # reasons' names) in one round trip each, at the same time.
        points, products = await asyncio.gather(
            self.points(ids), self.mongo.get_products(list(dict.fromkeys([*ids, *buyer.points])))
        )
        order = ids[:k]
        if diversify:
            relevance = {r.product_id: r.score for r in ranked}
            order = mmr(ids, relevance, {p: _joint(v) for p, v in points.items()}, k, self.settings.mmr_lambda)
        score = {r.product_id: r.score for r in ranked}
        shown = [pid for pid in order if pid in products]  # the others were deleted since they were indexed
        closest_of = dict(zip(shown, closest_many([points.get(pid, {}) for pid in shown], buyer), strict=True))
        hits = []
        for pid in shown:
            because = closest_of[pid]
            why = "close to what you browsed"
            if because is not None and because in products:
                why = reason(products[because].name, buyer.strongest.get(because, "view"))
            hits.append(RecommendHit(id=pid, score=score[pid], reason=why, because=because, product=products[pid]))
        timings = {"search": round((searched - clock) * 1000, 3),
                   "rank": round((time.perf_counter() - searched) * 1000, 3)}  # fmt: skip
        return Recommendations(buyer_id=None, strategy="buyer", events_used=buyer.events_used, hits=hits,
                               model=self.encoder.info.model, took_ms=0.0, timings_ms=timings)  # fmt: skip

    async def _popular(self, k: int, filters: SearchFilters, excluded: set[str]) -> Recommendations:
        clock = time.perf_counter()
        days = self.settings.popular_window_days
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        ranked = await self.store.popular(self.settings.weights, since, (k + len(excluded)) * 4 + 20)
        candidates = [(pid, s) for pid, s in ranked if pid not in excluded]
        products = await self.mongo.get_products([pid for pid, _ in candidates])
        why = f"popular in the last {days:g} days"
        hits = [
            RecommendHit(id=pid, score=s, reason=why, product=products[pid])
            for pid, s in candidates
            if pid in products and matches(products[pid], filters)
        ][:k]
        timings = {"popular": round((time.perf_counter() - clock) * 1000, 3)}
        return Recommendations(buyer_id=None, strategy="popular", events_used=0, hits=hits,
                               model=self.encoder.info.model, took_ms=0.0, timings_ms=timings)  # fmt: skip
