"""Index settings (PIPELINE__INDEX__...): HNSW + INT8 with rescoring keeps recall against exact search on a
20k-vector clustered set, filtered and not, on Qdrant Edge (graph built in a child process). Through the server
adapter the same test runs on qdrant-client's local mode, which takes the configuration but always scans: there
it checks the adapter's wiring (settings recorded, filters applied, ids mapped), not a graph. A change of
settings is a re-index that queries never notice."""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest

from pipeline.schemas import SearchFilters
from pipeline.stores.index_config import IndexSpec, memory_estimate
from pipeline.stores.vectors import ModelStamp, SpaceQuery, VectorPoint
from pipeline.types import Modality
from tests.conftest import make_settings

N, DIM, CLUSTERS = 20_000, 512, 200
HNSW_INT8 = IndexSpec(exact_below=2_000, quantization="int8")
STAMP = ModelStamp("f" * 64, DIM, "synthetic")


def _clustered(n: int, seed: int, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``CLUSTERS`` random centres (like embeddings of a catalog: near-duplicates in
    groups), and the cluster of each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    labels = rng.integers(0, CLUSTERS, n)
    x = centres[labels] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _index(backend: str, tmp_path, spec: IndexSpec):
    if backend == "edge":
        from pipeline.stores.qdrant_edge import EdgeIndex

        return EdgeIndex(tmp_path / "qdrant", "products", spec)
    from pipeline.stores.qdrant_server import ServerIndex

    return ServerIndex(":memory:", "products", spec=spec)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")
@pytest.mark.parametrize("backend", ["edge", "local"])
async def test_hnsw_int8_recall_against_exact_search(backend, tmp_path):
    images, _ = _clustered(N, seed=1)
    texts, _ = _clustered(N, seed=2)
    category = [f"c{i % 8}" for i in range(N)]  # 1/8 of the catalog
    brand = [f"b{i % 100}" for i in range(N)]  # 1/100
    points = [
        VectorPoint(f"p{i}", 0, images[i], texts[i], {"product_id": f"p{i}", "image_index": 0,
                                                      "category": [category[i]], "brand": brand[i]})
        for i in range(N)
    ]  # fmt: skip
    index = _index(backend, tmp_path, HNSW_INT8)
    await index.open(STAMP)
    try:
        # Bulk load: a new collection filled, then indexed once, then swapped in.
        async with index.rebuild(STAMP) as staged:
            for first in range(0, N, 2_000):
                await staged.upsert(points[first : first + 2_000])
        info = await index.info()
        assert info.points == N and info.index == HNSW_INT8
        if backend == "edge":  # the graph and the INT8 copy were built (local mode has neither)
            assert info.indexed_vectors == 2 * N, info

        rng = np.random.default_rng(3)
        n = 60 if backend == "edge" else 10  # local mode scans in Python: exact by construction, and slow
        # A query lands near a product (a shopper's photo of it: cosine ~0.9 to its stored vector), not at a
        # random point of the sphere, where every neighbour is as far as the next.
        noise = 0.5 / np.sqrt(DIM) * rng.standard_normal((n, DIM)).astype(np.float32)
        queries = images[rng.integers(0, N, n)] + noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        cases = {
            "unfiltered": (SearchFilters(), np.ones(N, bool)),
            "1/8": (SearchFilters(category="c3"), np.array([c == "c3" for c in category])),
            "1/100": (SearchFilters(brand="b7"), np.array([b == "b7" for b in brand])),
        }
        for name, (filters, mask) in cases.items():
            recalls = []
            for q in queries:
                sims = np.where(mask, images @ q, -np.inf)
                exact = {f"p{i}" for i in np.argsort(-sims)[:10]}
                hits = (await index.search([SpaceQuery(q, Modality.IMAGE)], filters, 10))[0]
                got = [h.product_id for h in hits]
                assert all(mask[int(p[1:])] for p in got), name  # the filter holds
                recalls.append(len(exact & set(got)) / 10)
            assert np.mean(recalls) >= 0.95, (name, np.mean(recalls))
    finally:
        await index.aclose()


async def test_settings_apply_to_new_collections_and_a_reindex_switches_them_under_queries(
    model_repository, catalog, tmp_path, mongo_uri, monkeypatch
):
    import pipeline.stores.qdrant_edge as edge_module
    from pipeline.stack import open_stack

    database = {"database": f"t_{uuid.uuid4().hex[:10]}"}
    plain = make_settings(model_repository, "edge", tmp_path, mongo_uri, mongo=database)
    async with open_stack(plain) as stack:
        assert (await stack.ingest.ingest(catalog)).added == 24
        before = await stack.search.search_text("red mug", top_k=5)
        status = await stack.status(deep=False)
        assert status["qdrant"]["index"]["configured"] == status["qdrant"]["index"]["collection"]

    wanted = {"exact_below": 10, "quantization": "int8", "m": 8}
    changed = make_settings(model_repository, "edge", tmp_path, mongo_uri, mongo=database, index=wanted)
    async with open_stack(changed) as stack:
        status = await stack.status(deep=False)
        # The live collection keeps what it was built with until a re-index; status says so.
        assert status["qdrant"]["index"]["collection"]["quantization"] == "none"
        assert "reindex" in status["qdrant"]["index"]["note"]

        errors: list[BaseException] = []
        answered = 0
        stop = asyncio.Event()

        async def ask() -> None:
            nonlocal answered
            while not stop.is_set():
                try:
                    got = await stack.search.search_text("red mug", top_k=5)
                    assert got.hits
                    answered += 1
                except BaseException as exc:  # every failure counts
                    errors.append(exc)
                await asyncio.sleep(0)

        # The graph is built in a child process: queries keep being answered while it runs (in the service's
        # own process, EdgeShard.optimize would hold the GIL and stop them all).
        during: list[int] = []
        build = edge_module.optimize_in_child

        async def watched(path, watch=None):
            before = answered
            result = await build(path, watch)
            during.append(answered - before)
            return result

        monkeypatch.setattr(edge_module, "optimize_in_child", watched)
        asker = asyncio.create_task(ask())
        report = await stack.ingest.reindex()
        await asyncio.sleep(0.2)
        stop.set()
        await asker
        # Same model: every product's current vectors are copied from the live collection, none re-embedded.
        assert errors == [] and report.updated == report.copied == 24
        assert len(during) == 1 and during[0] > 0, during  # built once, with answers arriving meanwhile
        status = await stack.status(deep=False)
        assert status["qdrant"]["index"]["collection"] == {**IndexSpec().as_record(), **wanted}
        assert status["qdrant"]["index"]["note"] is None
        index = status["qdrant"]["index"]
        assert index["indexed_vectors"] == index["vectors"] > 0  # the new collection's graph was built
        assert "INT8" in index["uses"] and index["memory_estimate"]["quantized_ram"] > 0
        after = await stack.search.search_text("red mug", top_k=5)
        assert [h.product_id for h in after.hits] == [h.product_id for h in before.hits]


def test_memory_estimate_follows_the_layout():
    plain = memory_estimate(1_000_000, 2, 512, IndexSpec())
    assert plain["vectors_ram"] == 2 * 512 * 4 * 1_000_000 and plain["quantized_ram"] == 0
    int8_disk = memory_estimate(1_000_000, 2, 512, IndexSpec(quantization="int8", on_disk=True))
    assert int8_disk["vectors_ram"] == 0 and int8_disk["quantized_ram"] == 2 * 512 * 1_000_000
    assert int8_disk["total_ram"] < plain["total_ram"] / 3
    assert memory_estimate(100, 2, 512, IndexSpec())["graph"] == 0  # below exact_below: no graph


@pytest.mark.parametrize("build_after_bulk", [True, False])
async def test_a_bulk_ingest_job_on_edge_ends_with_one_graph_build(
    model_repository, catalog, tmp_path, mongo_uri, build_after_bulk
):
    """Qdrant Edge builds graphs only in a re-index (an optimize holds the GIL): an ingest job whose writes left
    exact_below points or more outside any graph ends with one, its progress covering it; a job that wrote
    nothing new, or a setting turned off, builds none."""
    from pipeline.jobs.model import JobKind, JobState
    from pipeline.jobs.runner import run_foreground
    from pipeline.stack import open_stack

    index = {"exact_below": 10, "build_after_bulk": build_after_bulk}
    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, index=index)
    seen: list[tuple[int, int | None]] = []
    async with open_stack(settings) as stack:
        job = await run_foreground(
            stack, stack.jobs, JobKind.INGEST, {"path": str(catalog)}, lambda d, t, _: seen.append((d, t))
        )
        assert job.state is JobState.SUCCEEDED, job.message
        status = (await stack.status(deep=False))["qdrant"]["index"]
        hits = await stack.search.search_text("red mug", top_k=5)
        assert hits.hits
        if not build_after_bulk:
            assert "index" not in job.result and status["indexed_vectors"] == 0
            assert "reindex" in status["note"]  # what to do instead
            return
        assert job.result["added"] == 24
        assert job.result["index"]["copied"] == 24 and job.result["index"]["reindexed"] == 24  # no model call
        assert status["indexed_vectors"] == status["vectors"] > 0 and status["note"] is None
        # The bar went past the catalog's rows to cover the build of its 24 products, and ended full
        rows = len(catalog.read_text().splitlines())
        assert seen[-1] == (rows + 24, rows + 24) and (rows, rows) in seen
        again = await run_foreground(stack, stack.jobs, JobKind.INGEST, {"path": str(catalog)})
        assert again.result["unchanged"] == 24 and "index" not in again.result  # nothing new outside a graph
        # Updates move points out of the graph although the engine still counts their old copies as indexed:
        # the job's own writes decide too.
        changed = catalog.parent / f"changed-{uuid.uuid4().hex[:6]}.jsonl"
        rows = [json.loads(line) for line in catalog.read_text().splitlines()]
        changed.write_text("".join(json.dumps({**r, "name": r["name"] + " v2"}) + "\n" for r in rows))
        updated = await run_foreground(stack, stack.jobs, JobKind.INGEST, {"path": str(changed)})
        assert updated.result["updated"] == 24 and updated.result["index"]["copied"] == 24


async def test_a_failed_graph_build_leaves_the_rows_written_and_says_so(
    model_repository, catalog, tmp_path, mongo_uri, monkeypatch
):
    import pipeline.stores.qdrant_edge as edge_module
    from pipeline.errors import StoreUnavailable
    from pipeline.jobs.model import JobKind, JobState
    from pipeline.jobs.runner import run_foreground
    from pipeline.stack import open_stack

    async def broken(path, watch=None):
        raise StoreUnavailable("the index build ran out of disk")

    monkeypatch.setattr(edge_module, "optimize_in_child", broken)
    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, index={"exact_below": 10})
    async with open_stack(settings) as stack:
        job = await run_foreground(stack, stack.jobs, JobKind.INGEST, {"path": str(catalog)})
        assert job.state is JobState.SUCCEEDED and job.result["added"] == 24
        assert "out of disk" in job.result["index"]["failed"]
        assert (await stack.search.search_text("red mug", top_k=5)).hits  # the live collection as it was
        assert "reindex" in (await stack.status(deep=False))["qdrant"]["index"]["note"]


async def test_a_shutdown_during_the_build_resumes_at_the_build(
    model_repository, catalog, tmp_path, mongo_uri, monkeypatch
):
    """Stopped while it builds the graph, a bulk job is handed back and resumes at the build: its rows (or a
    downloaded catalog) are not read again, its progress starts from the rows' count again, not past it."""
    import httpx

    import pipeline.jobs.index_phase as phase_module
    import pipeline.jobs.kinds as kinds_module
    from pipeline.jobs.context import JobContext
    from pipeline.jobs.model import JobKind, JobState
    from pipeline.jobs.runner import execute
    from pipeline.jobs.store import this_process
    from pipeline.stack import open_stack

    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, index={"exact_below": 10})
    build = phase_module.reindex_reporting

    async def stopped(ctx, report, building=None):
        await report(5)
        raise asyncio.CancelledError  # the service stopping under the job

    async with open_stack(settings) as stack, httpx.AsyncClient() as http:
        store, owner = stack.jobs, this_process()
        job = await store.create(JobKind.INGEST, {"path": str(catalog)}, by="test", local=True)
        claimed = await store.claim(owner, job.id)
        assert claimed is not None
        monkeypatch.setattr(phase_module, "reindex_reporting", stopped)
        with pytest.raises(asyncio.CancelledError):
            await execute(JobContext(stack, store, claimed, http, local=True))
        handed_back = await store.get(job.id)
        assert handed_back.state is JobState.QUEUED and handed_back.result["index"]["done"] == 5
        rows = handed_back.progress.total - 24  # the rows, then the 24 products to copy

        async def never(ctx, params):
            raise AssertionError("the rows were read again")

        monkeypatch.setattr(phase_module, "reindex_reporting", build)
        monkeypatch.setitem(kinds_module.KINDS, JobKind.INGEST, never)
        again = await store.claim(owner, job.id)
        assert again is not None
        done = await execute(JobContext(stack, store, again, http, local=True))
        assert done.state is JobState.SUCCEEDED, done.message
        assert done.result["added"] == 24 and done.result["index"]["copied"] == 24
        assert done.progress.done == done.progress.total == rows + 24
        status = (await stack.status(deep=False))["qdrant"]["index"]
        assert status["indexed_vectors"] == status["vectors"] > 0
