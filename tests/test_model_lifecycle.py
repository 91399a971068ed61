"""The model lifecycle in-process: versions, shadow build with catch-up, validation, refusal, rollback, faults.

The whole loop through the real service (queries, clicks, a training job, switch and rollback under a query
loop) is ``tests/test_model_lifecycle_service.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import InvalidInput, ModelError, NotFound
from pipeline.jobs.model import JobKind
from pipeline.jobs.runner import run_foreground
from pipeline.schemas import Product
from pipeline.stack import open_stack
from tests.conftest import make_settings, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def degenerate_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP with its text tower flattened (the last layer norm's weight zeroed: every text maps to one
    vector) and the same vision tower: a candidate that cannot rank products by a query."""
    from transformers import CLIPModel

    folder = tmp_path_factory.mktemp("degenerate")
    ckpt = folder / "checkpoint"
    shutil.copytree(tiny_checkpoint, ckpt)
    model = CLIPModel.from_pretrained(ckpt)
    model.text_model.final_layer_norm.weight.data.zero_()
    model.save_pretrained(ckpt)
    run_cli("export", "--model", str(ckpt), "--out", str(folder / "repo"), "--precision", "fp32")
    return folder / "repo"


@pytest.fixture(scope="module")
def narrow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny CLIP with 16-dimensional embeddings, whose INT8 variant the gate refuses (min cosine > 1)."""
    from pipeline.export.tiny import build_tiny_clip

    folder = tmp_path_factory.mktemp("narrow")
    ckpt = build_tiny_clip(folder / "checkpoint", seed=2, projection_dim=16)
    run_cli("export", "--model", str(ckpt), "--out", str(folder / "repo"), "--precision", "fp32", "--precision",
            "int8", "--min-cosine", "1.01")  # fmt: skip
    return folder / "repo"


async def _logged(stack, queries: int) -> None:
    """Wait until the query log in MongoDB holds ``queries`` answers (it is written in the background)."""
    async with asyncio.timeout(10):
        while True:
            if await stack.mongo.events.count_documents({"query_id": {"$exists": True}}) >= queries:
                return
            await asyncio.sleep(0.05)


def _settings(model_repository: Path, tmp_path: Path, mongo_uri: str, **models: object):
    return make_settings(model_repository, "edge", tmp_path, mongo_uri, ingest={"batch_size": 8},
                         models={"heldout_every": 3, "max_regression": 0.0, **models})  # fmt: skip


async def test_registry_starts_with_the_configured_model(model_repository, tmp_path, mongo_uri, catalog):
    settings = _settings(model_repository, tmp_path, mongo_uri)
    async with open_stack(settings) as stack:
        (v1,) = await stack.registry.list()
        assert (v1.version, v1.status, v1.base, v1.built) == ("v1", "active", True, True)
        assert v1.fingerprint == stack.encoder.info.fingerprint and stack.gen.name == "v1"
        assert v1.checkpoint is not None and (Path(v1.checkpoint) / "config.json").exists()
        await stack.ingest.ingest(catalog)
        answer = await stack.search.search_text("red mug")
        assert answer.generation == "v1" and len(answer.query_id) == 32
    async with open_stack(settings) as stack:  # registered once
        assert [v.version for v in await stack.registry.list()] == ["v1"]


async def test_shadow_build_catches_up_writes_made_meanwhile(
    model_repository, other_repository, tmp_path, mongo_uri, catalog, monkeypatch
):
    """Writes made while the candidate is built and validated land in both generations: the switch loses none."""
    import pipeline.lifecycle.activate as activation
    from pipeline.lifecycle.activate import activate, add_version

    settings = _settings(model_repository, tmp_path, mongo_uri, max_regression=1.0)
    real_compare = activation.compare
    late = Product(id="late-1", name="late red mug", category="mug", color="red",
                   images=[str(catalog.parent / "img/mug-red-0-0.jpg")])  # fmt: skip

    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)

        async def compare_with_writes(candidate, active, mongo, s):
            # the build is done; the active generation takes writes meanwhile
            assert stack.gen.name == "v1"
            assert [o.status for o in await stack.ingest.upsert([late])] == ["added"]
            assert (await stack.ingest.delete(["mug-blue-0"]))[0] == ["mug-blue-0"]
            return await real_compare(candidate, active, mongo, s)

        monkeypatch.setattr(activation, "compare", compare_with_writes)
        v2 = await add_version(stack, other_repository)
        with pytest.raises(InvalidInput, match="already"):
            await add_version(stack, other_repository)
        result = await activate(stack, v2.version)
        # caught up: the late product (and, within a margin for writes in flight, those written just before)
        assert result["activated"] and result["caught_up"][0]["written"] >= 1 and result["caught_up"][0]["deleted"] == 1
        assert stack.gen.name == "v2" and stack.encoder.info.fingerprint == v2.fingerprint
        ids = await stack.index.product_ids()
        assert "late-1" in ids and "mug-blue-0" not in ids
        status = await stack.status()
        assert status["in_agreement"] and status["qdrant"]["model_matches"] and status["generation"] == "v2"
        states = await stack.mongo.get_states(["late-1", "shirt-red-0"])
        assert {s.fingerprint for s in states.values()} == {v2.fingerprint}  # ingest state follows the switch
        assert [o.status for o in await stack.ingest.upsert([late])] == ["unchanged"]
        # a rollback catches v1 up on what v2 took meanwhile
        gone = await stack.ingest.upsert([late.model_copy(update={"id": "late-2"})])
        assert gone[0].status == "added"
        back = await activate(stack, "v1")
        assert back["rollback"] and back["caught_up"][0]["written"] >= 1
        assert stack.gen.name == "v1" and "late-2" in await stack.index.product_ids()
        assert (await stack.status())["in_agreement"]
        versions = {v.version: v for v in await stack.registry.list()}
        assert versions["v1"].status == "active" and versions["v2"].status == "candidate"
        assert versions["v2"].validation["all"]["candidate"]  # figures kept
        # another process (a Celery worker) switches to v2: this one's next write follows it before writing
        async with stack.ingest.lock.exclusive():
            await stack.registry.set_active("v2", "v1")
            await stack.ingest.lock.set_generation("v2")
        assert stack.gen.name == "v1"
        third = late.model_copy(update={"id": "late-3"})
        assert (await stack.ingest.upsert([third]))[0].status == "added"
        assert stack.gen.name == "v2" and "late-3" in await stack.index.product_ids()
        await stack.registry.set_active("v1", "v2")  # and the service's poll follows the registry
        await stack.follow()
        assert stack.gen.name == "v1"


async def test_a_worse_candidate_is_refused_with_its_figures(
    model_repository, degenerate_repository, tmp_path, mongo_uri, catalog
):
    """Shoppers searched each product's name and clicked it; the held-out clicks rank the candidate (every text
    one vector) below the active model, which finds a product by its name."""
    from pipeline.recommend.events import EventType, ShopperEvent

    settings = _settings(model_repository, tmp_path, mongo_uri)
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
        async for product in stack.mongo.iter_products():
            answer = await stack.search.search_text(product.name)
            click = ShopperEvent(product_id=product.id, type=EventType.CLICK, query_id=answer.query_id)
            assert (await stack.recommend.record([click])).accepted == 1
        await _logged(stack, 24)
        job = await run_foreground(stack, stack.jobs, JobKind.ACTIVATE, {"version": "v9"})
        assert job.state == "failed" and "unknown model version" in (job.message or "")
        from pipeline.lifecycle.activate import add_version

        v2 = await add_version(stack, degenerate_repository)
        job = await run_foreground(stack, stack.jobs, JobKind.ACTIVATE, {"version": v2.version})
        assert job.state == "failed" and "worse than v1" in (job.message or ""), job.message
        assert stack.gen.name == "v1" and await stack.registry.active_version() == "v1"
        record = await stack.registry.get(v2.version)
        cand, act = record.validation["all"]["candidate"], record.validation["all"]["active"]
        assert cand["mrr"] < act["mrr"] or cand["recall@10"] < act["recall@10"], record.validation
        assert record.refused and record.built  # figures kept; built, so a forced activation needs no rebuild
        answer = await stack.search.search_text("red mug")
        assert answer.generation == "v1"
        forced = await run_foreground(stack, stack.jobs, JobKind.ACTIVATE, {"version": v2.version, "force": True})
        assert forced.state == "succeeded" and stack.gen.name == v2.version
        assert (await stack.registry.get(v2.version)).refused is None


async def test_a_failed_shadow_build_leaves_the_active_generation(
    model_repository, other_repository, tmp_path, mongo_uri, catalog, monkeypatch
):
    from pipeline.lifecycle.activate import activate, add_version
    from pipeline.product_vectors import ProductVectors

    settings = _settings(model_repository, tmp_path, mongo_uri, max_regression=1.0)
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
        v2 = await add_version(stack, other_repository)
        real_encode = ProductVectors.encode
        calls = {"n": 0}

        async def failing(self, products, *args, **kwargs):
            if self.encoder.info.fingerprint == v2.fingerprint:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise ModelError("the encoder crashed in the middle of the build")
            return await real_encode(self, products, *args, **kwargs)

        monkeypatch.setattr(ProductVectors, "encode", failing)
        with pytest.raises(ModelError, match="crashed"):
            await activate(stack, v2.version)
        assert stack.gen.name == "v1" and await stack.registry.active_version() == "v1"
        assert (await stack.search.search_text("red mug")).generation == "v1"
        assert (await stack.status())["in_agreement"]
        # the half-built shard is gone: the candidate's folder holds only its (empty) live shard
        folder = settings.qdrant.path / "generations" / v2.version
        pointer = json.loads((folder / "products.json").read_text())
        assert [p.name for p in folder.iterdir() if p.is_dir()] == [pointer["shard"]]

        async def one_unreadable(self, products, *args, **kwargs):  # its image fails for the candidate's build
            ok, failed = await real_encode(self, products, *args, **kwargs)
            if self.encoder.info.fingerprint != v2.fingerprint:
                return ok, failed
            return [e for e in ok if e[0].id != "poster-green-1"], failed + [
                (e[0], "unreadable") for e in ok if e[0].id == "poster-green-1"]  # fmt: skip

        monkeypatch.setattr(ProductVectors, "encode", one_unreadable)
        result = await activate(stack, v2.version)  # built again from the start
        assert result["build"]["embedded"] == 23 and result["build"]["left_out"] == ["poster-green-1"]
        assert stack.gen.name == v2.version and "poster-green-1" not in await stack.index.product_ids()
        # not in the new collection, so not marked current: the next ingest embeds it again
        assert (await stack.mongo.get_states(["poster-green-1"]))["poster-green-1"].indexed_hash is None
        monkeypatch.setattr(ProductVectors, "encode", real_encode)
        again = await stack.ingest.upsert([(await stack.mongo.get_products(["poster-green-1"]))["poster-green-1"]])
        assert again[0].status == "updated" and "poster-green-1" in await stack.index.product_ids()


async def test_versions_of_another_dimension_and_a_gate_refusal(
    model_repository, narrow_repository, tmp_path, mongo_uri, catalog
):
    """A 16-d candidate gets its own collection; served at INT8, a candidate whose INT8 the gate refused is not
    switched to (the active generation stays)."""
    from pipeline.lifecycle.activate import activate, add_version, retire

    int8 = _settings(model_repository, tmp_path, mongo_uri, max_regression=1.0)
    int8.encoder.precision = "int8"  # type: ignore[assignment]
    async with open_stack(int8) as stack:
        await stack.ingest.ingest(catalog)
        v2 = await add_version(stack, narrow_repository)
        assert v2.dim == 16 and v2.gate["int8"]["servable"] is False
        with pytest.raises(ModelError, match="gate"):
            await activate(stack, v2.version)
        assert stack.gen.name == "v1" and (await stack.search.search_text("red mug")).generation == "v1"
    fp32 = int8.model_copy(deep=True)
    fp32.encoder.precision = "fp32"  # type: ignore[assignment]
    async with open_stack(fp32) as stack:
        await activate(stack, v2.version)
        answer = await stack.search.search_text("red mug", top_k=3)
        assert answer.generation == v2.version and stack.encoder.info.dim == 16 and len(answer.hits) == 3
        with pytest.raises(InvalidInput, match="active"):
            await retire(stack, v2.version)
        await activate(stack, "v1")
        retired = await retire(stack, v2.version)
        assert (
            retired.status == "retired"
            and not (fp32.qdrant.path / "generations" / v2.version / "products.json").exists()
        )
        with pytest.raises(NotFound):
            await stack.registry.get("v7")


async def test_a_training_job_on_too_few_pairs_is_refused(model_repository, tmp_path, mongo_uri, catalog):
    settings = _settings(model_repository, tmp_path, mongo_uri, min_pairs=1000)
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
        job = await run_foreground(stack, stack.jobs, JobKind.TRAIN, {"epochs": 1})
        assert job.state == "failed" and "needs at least 1000" in (job.message or ""), job.message
        assert [v.version for v in await stack.registry.list()] == ["v1"]
        assert not (settings.models_root() / "v2").exists()  # nothing left behind


def test_models_commands_in_process(model_repository, other_repository, tmp_path, mongo_uri, catalog, monkeypatch):
    """``python -m pipeline models add / activate / list / retire`` with no service running (in-process)."""
    import uuid

    env = {"PIPELINE__ENCODER__MODEL_REPOSITORY": str(model_repository), "PIPELINE__ENCODER__PRECISION": "fp32",
           "PIPELINE__QDRANT__PATH": str(tmp_path / "data" / "qdrant"), "PIPELINE__MONGO__URI": mongo_uri,
           "PIPELINE__MONGO__DATABASE": f"t_{uuid.uuid4().hex[:10]}",
           "PIPELINE__MODELS__MAX_REGRESSION": "1"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run_cli("ingest", str(catalog))
    added = run_cli("models", "add", str(other_repository))
    assert "added v2" in added.stderr
    job = json.loads(run_cli("models", "activate", "v2", "--json").stdout)
    assert job["state"] == "succeeded" and job["result"]["activated"] and job["result"]["validation"]["all"]
    listed = json.loads(run_cli("models", "list", "--json").stdout)
    assert listed["active"] == "v2" and [v["status"] for v in listed["versions"]] == ["candidate", "active"]
    refused = run_cli("models", "retire", "v2", check=False)
    assert refused.returncode == 1 and "active version" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(run_cli("models", "activate", "v1", "--json").stdout)["result"]["rollback"] is True
    assert "retired v2" in run_cli("models", "retire", "v2").stderr
    unknown = run_cli("models", "activate", "v9", check=False)
    assert unknown.returncode == 1 and "unknown model version" in (unknown.stderr + unknown.stdout)
