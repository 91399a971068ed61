"""Shared fixtures: a tiny seeded CLIP saved to disk and exported through the real CLI, once per session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# No model hub, ever: any accidental hub call fails instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pipeline ARGS`` as a user would; returns the completed process."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.export.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def model_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model_repository"
    run_cli("export", "--model", str(tiny_checkpoint), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def other_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny CLIP (another seed, so another fingerprint), exported INT8 + FP32."""
    from pipeline.export.repository import export_repository
    from pipeline.export.tiny import build_tiny_clip
    from pipeline.types import Precision

    checkpoint = build_tiny_clip(tmp_path_factory.mktemp("other-clip"), seed=1)
    out = tmp_path_factory.mktemp("other") / "model_repository"
    export_repository(str(checkpoint), out, [Precision.FP32, Precision.INT8])
    return out


@pytest.fixture(scope="session")
def reference(tiny_checkpoint: Path):
    """transformers' own CLIPModel, tokenizer and image processor for the tiny checkpoint."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_checkpoint).eval()
    return (
        model,
        CLIPTokenizer.from_pretrained(tiny_checkpoint),
        CLIPImageProcessorPil.from_pretrained(tiny_checkpoint),
    )


# --- the search pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory):
    """A real mongod (the bundled 6.0 binary) on a free loopback port; MONGODB_URI points at another instead."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    from pipeline.stores.mongod import ManagedMongod

    mongod = ManagedMongod(tmp_path_factory.mktemp("mongod"))
    uri = mongod.start_sync()
    yield uri
    mongod.stop_sync()


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.catalogs import write_catalog

    return write_catalog(tmp_path_factory.mktemp("catalog"))


def make_settings(model_repository: Path, backend: str, tmp: Path, mongo_uri: str, **overrides):
    """Settings for one test: its own database, its own vector store (Edge folder or local mode)."""
    import uuid

    from pipeline.config import Settings

    env = {
        "encoder": {"model_repository": model_repository, "precision": "fp32"},
        "mongo": {"uri": mongo_uri, "database": f"t_{uuid.uuid4().hex[:10]}", "timeout_ms": 1500},
        "qdrant": {"path": tmp / "qdrant"} if backend == "edge" else {"url": ":memory:"},
    }
    for section, values in overrides.items():
        env.setdefault(section, {}).update(values)
    return Settings(**env)


@pytest.fixture(params=["edge", "local"])
def backend(request) -> str:
    return request.param


@pytest.fixture
async def stack(model_repository, backend, tmp_path, mongo_uri):
    from pipeline.stack import open_stack

    async with open_stack(make_settings(model_repository, backend, tmp_path, mongo_uri)) as opened:
        yield opened


# --- the HTTP service ------------------------------------------------------------------------------------


FINAL_JOB_STATES = {"succeeded", "failed", "cancelled"}


async def wait_job(client, job_id: str, timeout_s: float = 120) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job has ended; its record."""
    import asyncio

    async with asyncio.timeout(timeout_s):
        while True:
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            if job["state"] in FINAL_JOB_STATES:
                return job
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def asgi_service(config):
    """The app for ``config`` in-process (its real lifespan and stack) over ASGI, as the service's own user."""
    import json

    import httpx

    from pipeline.api.app import create_app

    app = create_app(config, public_url="http://test")
    async with app.router.lifespan_context(app):
        token = json.loads(config.service_file().read_text())["token"]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers={"X-API-Key": token}) as c:
            yield app.state.service, c


@pytest.fixture
async def app_client(model_repository, mongo_uri, tmp_path):
    """The app in-process (its real lifespan and stack, Qdrant Edge) over ASGI, as the service's own user."""
    async with asgi_service(make_settings(model_repository, "edge", tmp_path, mongo_uri)) as opened:
        yield opened


@pytest.fixture(scope="session")
def api_service(model_repository, catalog, mongo_uri, tmp_path_factory):
    """The real service (uvicorn subprocess, Qdrant Edge, the test mongod) with the test catalog ingested."""
    import uuid

    from pipeline.catalog import read_catalog
    from tests.service import service_env, start_service

    root = tmp_path_factory.mktemp("api")
    env = service_env(model_repository, root / "qdrant", mongo_uri, f"t_{uuid.uuid4().hex[:10]}",
                      PIPELINE__ENCODER__PRECISION="fp32")  # fmt: skip
    service = start_service(env, root / "service.log")
    rows = [r.product.model_dump(mode="json") for r in read_catalog(catalog) if r.product]
    with service.client() as http:  # the local token may name files on this machine
        answer = http.post("/v1/products/batch", json={"products": rows}).json()
    assert answer["added"] == 24, answer
    yield service
    assert service.stop() in (0, -15)  # uvicorn re-raises the signal after its clean shutdown
    assert "Application shutdown complete" in service.logs() and "Traceback" not in service.logs()


@pytest.fixture(scope="session")
def api_keys(api_service: Any) -> dict[str, str]:
    with api_service.client() as http:
        return {s: http.post("/v1/keys", json={"name": f"k-{s}", "scope": s}).json()["key"] for s in
                ("search", "write", "admin")}  # fmt: skip
