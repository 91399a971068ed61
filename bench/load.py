"""Load: many concurrent callers of the search service on the embedded default, for a fixed time.

Checks what a soak test should: no errors, every answer the same as the one computed alone beforehand,
memory flat, and the cache and event queue inside their bounds (the cache is set smaller than the set of
distinct queries, so it evicts all along).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import show
from bench.encoders import ensure_vit_b32
from bench.search import _fill


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def _same(got: Any, ref: Any, tol: float) -> bool:
    """Same products in the same order; where the order differs, only between near-equal fused scores.

    The in-process INT8 encoder runs one input per model call, so a query embedded while others are queued
    should give the vector it gives alone; a near-tie swap is counted apart from a wrong answer all the same.
    """
    if [h.product_id for h in got.hits] == [h.product_id for h in ref.hits]:
        return True
    ref_score = {h.product_id: h.score for h in ref.hits}
    cutoff = ref.hits[-1].score
    return all(abs(ref_score.get(h.product_id, cutoff) - h.score) <= tol for h in got.hits)


async def _load(settings: Any, n: int, callers: int, seconds: float, distinct: int) -> dict[str, Any]:
    from pipeline.stack import open_stack

    async with open_stack(settings) as stack:
        await _fill(stack, n, stack.encoder.info.dim)
        texts = [
            f"{c} item {i}" for i, c in enumerate(["red mug", "blue shirt", "green bag", "tall lamp"] * (distinct // 4))
        ]
        ids = [f"p{i:06d}" for i in range(0, n, max(1, n // distinct))][:distinct]
        ref_text = {t: await stack.search.search_text(t) for t in texts}
        ref_prod = {p: await stack.search.search_product(p) for p in ids}
        counts = {"queries": 0, "errors": 0, "wrong": 0, "near_ties": 0}
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        max_pending = 0
        end = time.monotonic() + seconds

        async def caller(k: int) -> None:
            rng = random.Random(k)
            while time.monotonic() < end:
                t = time.perf_counter()
                try:
                    if rng.random() < 0.7:
                        q = rng.choice(texts)
                        got, ref = await stack.search.search_text(q), ref_text[q]
                    else:
                        q = rng.choice(ids)
                        got, ref = await stack.search.search_product(q), ref_prod[q]
                except Exception:  # counted: the soak's job is to see any
                    counts["errors"] += 1
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                counts["queries"] += 1
                exact = [h.product_id for h in got.hits] == [h.product_id for h in ref.hits]
                if not exact:
                    counts["near_ties" if _same(got, ref, 1e-4) else "wrong"] += 1

        async def sampler() -> None:
            nonlocal max_pending
            start = time.monotonic()
            while time.monotonic() < end:
                rss.append((time.monotonic() - start, _rss_mb()))
                max_pending = max(max_pending, stack.events.pending)
                await asyncio.sleep(1)

        await asyncio.gather(sampler(), *(caller(k) for k in range(callers)))
        cache = stack.cache.stats()
        await stack.events.aclose()
        return {
            **counts,
            "latencies": latencies,
            "rss": rss,
            "cache": cache,
            "max_pending": max_pending,
            "events_written": stack.events.written,
            "events_dropped": stack.events.dropped,
            "queue_size": settings.events.queue_size,
        }


def run(n: int = 1_000, callers: int = 32, seconds: float = 60, distinct: int = 400, cache_entries: int = 200) -> None:
    import numpy as np

    from pipeline.config import CacheSettings, EncoderSettings, MongoSettings, QdrantSettings, Settings
    from pipeline.types import Precision

    repo = ensure_vit_b32()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            encoder=EncoderSettings(model_repository=repo, precision=Precision.INT8),
            qdrant=QdrantSettings(path=Path(tmp) / "qdrant"),
            mongo=MongoSettings(data_dir=Path(tmp) / "mongo"),
            cache=CacheSettings(max_entries=cache_entries),
        )
        r = asyncio.run(_load(settings, n, callers, seconds, distinct))
    lat = r["latencies"]
    rss = [mb for t, mb in r["rss"] if t >= 5] or [mb for _, mb in r["rss"]]
    rows = [
        [
            f"{callers}",
            f"{seconds:.0f}",
            f"{r['queries']:,}",
            f"{r['queries'] / seconds:.0f}",
            f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f}",
            str(r["errors"]),
            f"{r['wrong']} ({r['near_ties']} near-tie swaps)",
            f"{rss[0]:.0f} → {rss[-1]:.0f} (max {max(rss):.0f})",
            f"{r['cache'].entries}/{r['cache'].max_entries}, hit rate {r['cache'].hit_rate:.2f}",
            f"max {r['max_pending']}/{r['queue_size']}, {r['events_written']:,} written, {r['events_dropped']} dropped",
        ]
    ]
    show(
        f"Load: {callers} concurrent callers, {n:,} products, embedded default (INT8 per-row + Qdrant Edge + mongod)",
        [
            "callers",
            "s",
            "queries",
            "q/s",
            "latency ms p50 / p99",
            "errors",
            "wrong answers",
            "RSS MB (5 s → end)",
            "cache entries",
            "event queue",
        ],
        rows,
        "load",
        f"70% text queries over {distinct} distinct texts (cache smaller than that: it evicts throughout), 30% "
        "product-id queries. Every answer is compared with the answer computed alone before the run; a near-tie "
        "swap is a reordering between products whose fused scores differ by ≤ 1e-4. INT8 per-row: one input per "
        "model call (batch-independent vectors), concurrent callers queued together. No baseline: no ratio.",
    )
