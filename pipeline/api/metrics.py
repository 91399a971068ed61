"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can build several).

HTTP requests by route and status come from prometheus-fastapi-instrumentator; the rest is the search
stack's own: latency per query stage, the top-1 similarity per query kind (the score distribution a
similarity API is watched by), queries with no hit above ``min_score``, cache and event-log figures read
from the live objects at scrape time, product counts per store, and the model being served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.errors import StoreUnavailable
from pipeline.schemas import SearchResponse

if TYPE_CHECKING:
    from pipeline.stack import Stack

_STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)
_SIMILARITY_BUCKETS = tuple(round(-0.2 + 0.05 * i, 2) for i in range(25))  # -0.2 … 1.0


class _StackCollector(Collector):
    """Figures that live in the stack's objects, read when Prometheus scrapes."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def collect(self) -> Iterator[Metric]:
        cache = self.stack.cache.stats()
        yield CounterMetricFamily("embedding_cache_hits", "Query embeddings served from the cache", cache.hits)
        yield CounterMetricFamily("embedding_cache_misses", "Query embeddings computed", cache.misses)
        yield GaugeMetricFamily("embedding_cache_entries", "Embeddings held in the cache", cache.entries)
        events = self.stack.events
        yield GaugeMetricFamily("event_log_queue_depth", "Events waiting to be written to MongoDB", events.pending)
        yield CounterMetricFamily("event_log_written", "Events written to MongoDB", events.written)
        yield CounterMetricFamily("event_log_dropped", "Events dropped (queue full or MongoDB down)", events.dropped)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = Histogram("search_stage_seconds", "Latency of one stage of a query", ["kind", "stage"],
                               registry=r, buckets=_STAGE_BUCKETS)  # fmt: skip
        self.top1 = Histogram("search_top1_similarity", "Cosine similarity of the best hit", ["kind"],
                              registry=r, buckets=_SIMILARITY_BUCKETS)  # fmt: skip
        self.no_hit = Counter("search_no_hit", "Queries answered with no hit above min_score", ["kind"], registry=r)
        self.queries = Counter("search_queries", "Queries answered", ["kind"], registry=r)
        self.products = Gauge("catalog_products", "Products in each store", ["store"], registry=r)
        self.model = Info("model", "The model being served", registry=r)
        # Per generation (model version): queries, their top-1 similarity, clicks on their results within
        # the top 1/5/10 (click-through rate at k = clicks within k / queries).
        self.gen_queries = Counter("generation_queries", "Queries answered, by generation", ["generation"],
                                   registry=r)  # fmt: skip
        self.gen_top1 = Histogram("generation_top1_similarity", "Top-1 similarity by generation", ["generation"],
                                  registry=r, buckets=_SIMILARITY_BUCKETS)  # fmt: skip
        self.gen_clicks = Counter("generation_clicks", "Clicks on a result, by generation and rank reached",
                                  ["generation", "within"], registry=r)  # fmt: skip

    def attach(self, stack: Stack) -> None:
        info = stack.encoder.info
        self.model.info({"name": info.model, "fingerprint": info.fingerprint, "precision": str(info.precision),
                         "backend": info.backend, "dim": str(info.dim)})  # fmt: skip
        self.registry.register(_StackCollector(stack))
        stack.shared.on_click.append(self.click)

    def click(self, generation: str, rank: int | None) -> None:
        for k in (1, 5, 10):
            if rank is not None and rank <= k:
                self.gen_clicks.labels(generation, str(k)).inc()
        self.gen_clicks.labels(generation, "any").inc()

    def observe(self, response: SearchResponse) -> None:
        kind = str(response.kind)
        self.queries.labels(kind).inc()
        self.gen_queries.labels(response.generation).inc()
        if response.hits:
            self.gen_top1.labels(response.generation).observe(response.hits[0].similarity)
        for stage, ms in response.timings_ms.items():
            if stage != "total":
                self.stage.labels(kind, stage).observe(ms / 1000)
        if response.hits:
            self.top1.labels(kind).observe(response.hits[0].similarity)
        else:
            self.no_hit.labels(kind).inc()

    async def render(self, stack: Stack) -> bytes:
        """The exposition text; product counts are read fresh (bounded by a short timeout)."""
        info = stack.encoder.info
        self.model.info({"name": info.model, "fingerprint": info.fingerprint, "precision": str(info.precision),
                         "backend": info.backend, "dim": str(info.dim), "generation": stack.gen.name})  # fmt: skip
        try:
            async with asyncio.timeout(5.0):
                counts = await stack.mongo.counts()
                self.products.labels("mongodb").set(counts["products"])
                self.products.labels("mongodb_not_indexed").set(counts["not_indexed"])
                self.products.labels("qdrant_points").set((await stack.index.info()).points)
        except (StoreUnavailable, TimeoutError):
            pass  # the last known counts stay; /health says which store is down
        return generate_latest(self.registry)
