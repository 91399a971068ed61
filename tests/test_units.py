"""Pure pieces: fusion and grouping, the cache, the event log's bounds, catalog parsing, mongod discovery."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import numpy as np
import pytest

from pipeline.cache import EmbeddingCache, cache_key
from pipeline.catalog import read_catalog
from pipeline.errors import InvalidInput, StoreUnavailable
from pipeline.events import EventLog
from pipeline.fusion import (
    Fusion,
    PointHit,
    best_per_product,
    dbsf_scores,
    fuse,
    rrf_scores,
    tied_ranks,
    weighted_scores,
)
from pipeline.triton.onnx_model import _concat
from pipeline.types import Modality, Precision

IMG, TXT = Modality.IMAGE, Modality.TEXT


def test_best_per_product_keeps_best_point():
    hits = [PointHit("a", 0, 0.5, IMG), PointHit("b", 0, 0.9, IMG), PointHit("a", 1, 0.8, IMG)]
    assert [(h.product_id, h.image_index) for h in best_per_product(hits)] == [("b", 0), ("a", 1)]


def test_rrf_ranks_by_reciprocal_rank_and_reports_best_space():
    image = [PointHit("a", 2, 0.31, IMG), PointHit("b", 0, 0.30, IMG), PointHit("c", 0, 0.2, IMG)]
    text = [PointHit("b", 0, 0.9, TXT), PointHit("c", 0, 0.8, TXT)]
    fused = fuse([image, text], [1.0, 1.0], limit=10, method=Fusion.RRF, rrf_k=60)
    assert [f.product_id for f in fused] == ["b", "c", "a"]  # b: 1/62 + 1/61 beats a: 1/61
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].matched is TXT and fused[0].image_index is None  # b ranked best in the text list
    assert fused[2].matched is IMG and fused[2].image_index == 2
    assert len(fuse([image, text], [1.0, 0.0], limit=2, method=Fusion.RRF)) == 2


def test_tied_cosines_share_a_rank():
    hits = [PointHit(p, 0, s, TXT) for p, s in [("a", 0.9), ("b", 0.9), ("c", 0.9 - 1e-9), ("d", 0.5), ("e", 0.4)]]
    assert tied_ranks(hits) == [1, 1, 1, 4, 5]
    assert tied_ranks([]) == []


def _tie_case():
    """Twelve products share the exact title (tied in the title list, in the engine's arbitrary order: here the
    reverse of their photos'); the photo list tells them apart. A near-miss ("vase") has the best photo and a
    weaker title."""
    text = [PointHit(f"mug{i:02d}", 0, 1.0, TXT) for i in reversed(range(12))] + [PointHit("vase", 0, 0.8, TXT)]
    image = [PointHit("vase", 0, 0.62, IMG)] + [PointHit(f"mug{i:02d}", 0, 0.6 - i / 100, IMG) for i in range(12)]
    return [image, text]


@pytest.mark.parametrize("method", list(Fusion))
def test_tied_title_products_are_ordered_by_their_photos(method):
    fused = fuse(_tie_case(), [1.0, 1.0], limit=20, method=method)
    mugs = [f.product_id for f in fused if f.product_id != "vase"]
    assert mugs == [f"mug{i:02d}" for i in range(12)]  # the tie never decides: the photo list does
    if method is not Fusion.RRF:  # RRF gives the vase 1/61 + 1/73, as much as mug11: ranks hide the gap
        assert fused[-1].product_id == "vase"


@pytest.mark.parametrize("method", list(Fusion))
def test_order_follows_the_shown_score(method):
    rng = np.random.default_rng(0)
    lists = []
    for using in (IMG, TXT):
        sims = np.round(rng.uniform(-0.2, 0.9, 40), 2)  # rounded: ties within and across lists
        ids = rng.choice(60, 40, replace=False)
        hits = [PointHit(f"p{int(i)}", 0, float(s), using) for i, s in zip(ids, sims, strict=True)]
        lists.append(best_per_product(hits))
    fused = fuse(lists, [1.0, 0.5], limit=100, method=method)
    assert len(fused) == len({h.product_id for lst in lists for h in lst})
    scores = [f.score for f in fused]
    assert scores == sorted(scores, reverse=True)
    for a, b in itertools.pairwise(fused):  # equal scores: higher similarity, then id; never arbitrary
        if a.score == b.score:
            assert (-a.similarity, a.product_id) < (-b.similarity, b.product_id)
    assert fuse(lists, [1.0, 0.5], limit=100, method=method) == fused


def test_weighted_is_the_weighted_mean_of_cosines():
    image = [PointHit("a", 1, 0.5, IMG), PointHit("b", 0, 0.3, IMG)]
    text = [PointHit("b", 0, 0.9, TXT)]
    fused = {f.product_id: f for f in fuse([image, text], [1.0, 3.0], limit=5, method=Fusion.WEIGHTED)}
    assert fused["b"].score == pytest.approx((0.3 + 3 * 0.9) / 4)
    # a is beyond the text list's top: it counts that list's lowest cosine (0.9), an upper bound
    assert fused["a"].score == pytest.approx((0.5 + 3 * 0.9) / 4)
    assert fused["a"].matched is IMG and fused["a"].image_index == 1
    assert weighted_scores([image, []], [1.0, 1.0]) == pytest.approx({"a": 0.5, "b": 0.3})  # empty list left out
    assert weighted_scores([[], []], [1.0, 1.0]) == {}


def test_dbsf_matches_qdrants_normalisation():
    sims = [0.9, 0.7, 0.5]
    image = [PointHit(p, 0, s, IMG) for p, s in zip("abc", sims, strict=True)]
    text = [PointHit("c", 0, 0.4, TXT)]  # one hit: 0.5, as Qdrant gives it
    mean, std = 0.7, float(np.std(sims, ddof=1))
    got = dbsf_scores([image, text], [1.0, 2.0])
    assert got["a"] == pytest.approx((0.9 - (mean - 3 * std)) / (6 * std))
    assert got["c"] == pytest.approx((0.5 - (mean - 3 * std)) / (6 * std) + 2 * 0.5)
    assert dbsf_scores([[PointHit("x", 0, 0.3, IMG), PointHit("y", 0, 0.3, IMG)]], [1.0]) == {"x": 0.5, "y": 0.5}


def test_rrf_ties_get_equal_scores():
    scores = rrf_scores(_tie_case(), [1.0, 1.0], k=60)
    assert scores["mug00"] == pytest.approx(1 / 62 + 1 / 61)  # photo rank 2, title rank 1 (tied with eleven)
    assert scores["mug11"] == pytest.approx(1 / 73 + 1 / 61)


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


def test_stop_ends_a_task_whose_loop_swallowed_the_cancellation():
    """A driver call that turns the cancellation into its own error (PyMongo's server selection, seen while
    mongod was gone) left a retry loop running and ``cancel(); await task`` waiting forever."""
    from pipeline import aio

    async def swallowing_call() -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise ConnectionError("server selection timed out") from None  # the cancellation is spent

    async def retry_loop(rounds: list[int]) -> None:
        while True:
            rounds.append(1)
            with contextlib.suppress(ConnectionError):
                await swallowing_call()
            await asyncio.sleep(0.01)

    async def main() -> tuple[bool, int, bool]:
        rounds: list[int] = []
        task = asyncio.create_task(retry_loop(rounds))
        await asyncio.sleep(0.02)  # inside the swallowing call
        task.cancel()
        await asyncio.sleep(0.2)
        survived = not task.done()  # what made the shutdown hang
        stopped = await aio.stop(task, grace_s=5, every_s=0.05)
        return survived, len(rounds), stopped and task.cancelled()

    survived, rounds, stopped = asyncio.run(main())
    assert survived and rounds > 1 and stopped


def test_stop_gives_up_on_a_task_that_never_ends_instead_of_hanging(caplog):
    from pipeline import aio

    async def main() -> tuple[bool, bool]:
        released = asyncio.Event()

        async def stubborn() -> None:
            while not released.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)

        task = asyncio.create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        stopped = await aio.stop(task, grace_s=0.3, every_s=0.05)
        running = not task.done()
        released.set()
        await task
        return stopped, running

    assert asyncio.run(main()) == (False, True)
    assert "'stubborn' did not stop within" in caplog.text


def test_inference_threads_divide_the_cores_among_the_workers(monkeypatch):
    import os

    from pipeline.config import EncoderSettings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert EncoderSettings().threads_per_call() == 8  # two workers by default: a text beside a photo
    assert EncoderSettings(infer_workers=1).threads_per_call() == 16
    assert EncoderSettings(infer_workers=32).threads_per_call() == 1
    assert EncoderSettings(intra_op_threads=3).threads_per_call() == 3  # set: taken as it is
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert EncoderSettings().threads_per_call() == 1
