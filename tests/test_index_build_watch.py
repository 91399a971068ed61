"""While Qdrant Edge builds a shard's graphs (in a child process, minutes at a million vectors), the caller hears
how long it has run every few seconds, and a job shows it and can be cancelled during it: the child is killed,
the half-built shard dropped, the rows the job wrote stay and the live collection answers as before."""

from __future__ import annotations

import asyncio
import sys
import time

import psutil
import pytest

from tests.conftest import make_settings

SLEEPER = "import time; time.sleep(60)"  # a build that would run a minute


def _sleepers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if SLEEPER in " ".join(p.cmdline())]


@pytest.fixture
def slow_build(monkeypatch):
    from pipeline.stores import edge_optimize

    monkeypatch.setattr(edge_optimize, "CHILD", (sys.executable, "-c", SLEEPER))
    monkeypatch.setattr(edge_optimize, "WATCH_EVERY_S", 0.05)


class Stop(Exception):
    pass


async def test_the_watch_hears_the_build_and_stopping_it_kills_the_child(tmp_path, slow_build):
    from pipeline.stores.edge_optimize import optimize_in_child

    heard: list[float] = []

    async def watch(seconds: float) -> None:
        heard.append(seconds)
        if len(heard) == 3:
            raise Stop

    start = time.monotonic()
    with pytest.raises(Stop):
        await optimize_in_child(tmp_path, watch)
    assert time.monotonic() - start < 30  # not the child's minute: it was killed
    assert len(heard) == 3 and heard == sorted(heard) and heard[0] > 0
    assert _sleepers() == []


async def test_a_real_build_reports_its_peak_memory(tmp_path):
    """The child builds a real shard (below the watch's interval here) and says what it used."""
    import numpy as np

    from pipeline.stores.edge_optimize import optimize_in_child
    from pipeline.stores.index_config import IndexSpec
    from pipeline.stores.qdrant_edge import EdgeIndex
    from pipeline.stores.vectors import ModelStamp, VectorPoint

    stamp = ModelStamp("e" * 64, 8, "synthetic")
    index = EdgeIndex(tmp_path / "qdrant", "products", IndexSpec(exact_below=1_000_000))
    await index.open(stamp)
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    await index.upsert([VectorPoint(str(i), 0, v, v, {"product_id": str(i), "image_index": 0})
                        for i, v in enumerate(vectors)])  # fmt: skip
    path = index._live.path  # the live shard's folder, closed below so the child may open it
    await index.aclose()
    report = await optimize_in_child(path)
    assert report["points"] == 50 and report["peak_rss_mb"] > 10


async def test_a_cancel_during_the_graph_build_kills_it_and_keeps_the_rows(
    model_repository, catalog, tmp_path, mongo_uri, slow_build
):
    from pipeline.jobs.model import JobKind, JobState
    from pipeline.jobs.runner import run_foreground
    from pipeline.stack import open_stack

    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, index={"exact_below": 10})
    async with open_stack(settings) as stack:
        # The build's first progress write fails (the job store briefly unreachable): the build goes on.
        report, failed = stack.jobs.report, []

        async def flaky(job_id, done, total, result, *args):
            if "seconds" in result.get("index", {}) and not failed:
                failed.append(job_id)
                raise ConnectionError("job store unreachable")
            return await report(job_id, done, total, result, *args)

        stack.jobs.report = flaky
        run = asyncio.create_task(run_foreground(stack, stack.jobs, JobKind.INGEST, {"path": str(catalog)}))
        building = None
        for _ in range(1200):  # until the job says how long its build has run
            running = await stack.jobs.recent(JobState.RUNNING)
            phase = running[0].result.get("index", {}) if running else {}
            if phase.get("phase") == "building the graphs" and phase.get("seconds") is not None:
                building = running[0]
                break
            await asyncio.sleep(0.05)
        assert building is not None and _sleepers() and failed  # reported after a failed write
        await stack.jobs.cancel(building.id)
        job = await asyncio.wait_for(run, 30)  # not the build's minute
        assert job.state is JobState.SUCCEEDED and job.result["added"] == 24
        assert "cancelled" in job.result["index"]
        assert _sleepers() == []
        assert (await stack.search.search_text("red mug", top_k=5)).hits  # the live collection as it was
        status = (await stack.status(deep=False))["qdrant"]["index"]
        assert status["indexed_vectors"] == 0 and "reindex" in status["note"]
        shards = [p for p in (tmp_path / "qdrant").iterdir() if p.is_dir()]
        assert len(shards) == 1  # the half-built one was dropped


def test_the_cli_bar_names_the_build_step_and_its_seconds():
    from pipeline.cli_jobs import _step

    assert _step("ingest", {"added": 5}) == "ingest"
    assert _step("ingest", {"index": {"phase": "copying vectors", "done": 3}}) == "ingest: copying vectors"
    building = {"phase": "building the graphs", "seconds": 42}
    assert _step("ingest", {"added": 5, "index": building}) == "ingest: building the graphs, 42 s"
    assert _step("reindex", {"reindexed": 9, **building}) == "reindex: building the graphs, 42 s"
