"""Pure pieces: fusion and grouping, the cache, the event log's bounds, catalog parsing, mongod discovery."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.cache import EmbeddingCache, cache_key
from pipeline.catalog import read_catalog
from pipeline.errors import InvalidInput, StoreUnavailable
from pipeline.events import EventLog
from pipeline.fusion import PointHit, best_per_product, rrf_fuse
from pipeline.triton.onnx_model import _concat
from pipeline.types import Modality, Precision

IMG, TXT = Modality.IMAGE, Modality.TEXT


def test_best_per_product_keeps_best_point():
    hits = [PointHit("a", 0, 0.5, IMG), PointHit("b", 0, 0.9, IMG), PointHit("a", 1, 0.8, IMG)]
    assert [(h.product_id, h.image_index) for h in best_per_product(hits)] == [("b", 0), ("a", 1)]


def test_rrf_fuse_ranks_by_reciprocal_rank_and_reports_best_space():
    image = [PointHit("a", 2, 0.31, IMG), PointHit("b", 0, 0.30, IMG), PointHit("c", 0, 0.2, IMG)]
    text = [PointHit("b", 0, 0.9, TXT), PointHit("c", 0, 0.8, TXT)]
    fused = rrf_fuse([image, text], [1.0, 1.0], k=60, limit=10)
    assert [f.product_id for f in fused] == ["b", "c", "a"]  # b: 1/62 + 1/61 beats a: 1/61
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].matched is TXT and fused[0].image_index is None  # b ranked best in the text list
    assert fused[2].matched is IMG and fused[2].image_index == 2
    assert len(rrf_fuse([image, text], [1.0, 0.0], k=60, limit=2)) == 2


def test_cache_lru_ttl_and_keys():
    cache = EmbeddingCache(max_entries=2, ttl_s=60)
    k = [cache_key(IMG, "fp", Precision.INT8, bytes([i])) for i in range(3)]
    assert cache_key(TXT, "fp", Precision.INT8, " Red  MUG ") == cache_key(TXT, "fp", Precision.INT8, "red mug")
    assert cache_key(TXT, "fp", Precision.INT8, "red mug") != cache_key(TXT, "fp", Precision.FP32, "red mug")
    assert cache_key(TXT, "fp", Precision.INT8, "red mug") != cache_key(TXT, "other", Precision.INT8, "red mug")
    cache.put(k[0], np.ones(3))
    cache.put(k[1], np.ones(3))
    assert cache.get(k[0]) is not None  # k[0] now most recent
    cache.put(k[2], np.ones(3))  # evicts k[1], the least recently used
    assert cache.get(k[1]) is None and cache.get(k[2]) is not None
    stats = cache.stats()
    assert (stats.entries, stats.hits, stats.misses) == (2, 2, 1)
    with pytest.raises(ValueError):
        cache.get(k[0])[0] = 5  # shared vectors are read-only
    assert EmbeddingCache(0, 60).get(k[0]) is None  # disabled


def test_cache_ttl_expires():
    cache = EmbeddingCache(max_entries=10, ttl_s=0.05)
    cache.put("k", np.ones(2))
    assert cache.get("k") is not None
    import time

    time.sleep(0.08)
    assert cache.get("k") is None


async def test_event_log_never_blocks_and_counts_drops():
    gate = asyncio.Event()
    written: list[dict] = []

    async def slow_write(batch):
        await gate.wait()
        written.extend(batch)

    log = EventLog(slow_write, queue_size=5, batch_size=2)
    log.start()
    for i in range(20):
        log.record({"i": i})  # never awaits, never raises
    await asyncio.sleep(0.01)
    assert log.pending <= 5 and log.dropped >= 13
    gate.set()
    await log.aclose()
    assert len(written) + log.dropped == 20


async def test_event_log_survives_a_dead_store():
    async def dead(batch):
        raise StoreUnavailable("down")

    log = EventLog(dead, queue_size=100, batch_size=10)
    log.start()
    for i in range(30):
        log.record({"i": i})
    await log.aclose()
    assert log.dropped == 30 and log.written == 0


def test_catalog_csv_rows_and_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    path = tmp_path / "c.csv"
    path.write_text(
        "id,name,price,images,material,attributes\n"
        'p1,Red mug,12.5,a.jpg|b.jpg,ceramic,"{""size"": ""L""}"\n'
        "p2,,3,a.jpg,,\n"
        "p3,Cup,abc,a.jpg,,\n"
        "p4,Cup,1,http://example.com/x.jpg,,,extra\n"
    )
    rows = list(read_catalog(path))
    assert [r.line for r in rows] == [2, 3, 4, 5]
    p1 = rows[0].product
    assert p1.price == 12.5 and p1.attributes == {"size": "L", "material": "ceramic"}
    assert p1.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert "name" in rows[1].error and "price" in rows[2].error and "more fields" in rows[3].error
    with pytest.raises(InvalidInput, match="unknown catalog format"):
        list(read_catalog(tmp_path / "a.jpg"))
    with pytest.raises(InvalidInput, match="no such catalog"):
        list(read_catalog(tmp_path / "missing.jsonl"))


def test_triton_python_model_pads_requests_to_longest():
    ids = _concat([np.array([[0, 5, 1]]), np.array([[0, 5, 6, 7, 1], [0, 1, 1, 1, 1]])], pad_value=1)
    assert ids.tolist() == [[0, 5, 1, 1, 1], [0, 5, 6, 7, 1], [0, 1, 1, 1, 1]]
    pixels = _concat([np.zeros((1, 3, 2, 2)), np.ones((2, 3, 2, 2))], pad_value=0)
    assert pixels.shape == (3, 3, 2, 2)
