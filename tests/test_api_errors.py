"""Error mapping at the edge, in-process: a component failing mid-request becomes its status and a JSON body
(the failures are injected into the real stack; the rest of the request path is the service's own)."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.errors import EncoderUnavailable, StoreUnavailable
from tests.conftest import make_settings
from tests.service import error_message


@pytest.fixture
async def app_client(model_repository, mongo_uri, tmp_path):
    from pipeline.api.app import create_app

    config = make_settings(model_repository, "edge", tmp_path, mongo_uri)
    app = create_app(config, public_url="http://test")
    async with app.router.lifespan_context(app):
        token = json.loads(config.service_file().read_text())["token"]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers={"X-API-Key": token}) as c:
            yield app.state.service, c


async def test_qdrant_down_is_503_with_a_clear_message(app_client, monkeypatch):
    service, client = app_client

    async def down(*args, **kwargs):
        raise StoreUnavailable("Qdrant: connection refused at http://qdrant:6333")

    monkeypatch.setattr(service.stack.index, "search", down)
    r = await client.post("/v1/search/text", json={"text": "red mug"})
    assert "Qdrant: connection refused" in error_message(r, 503) and r.json()["error"]["code"] == "store_unavailable"


async def test_encoder_down_is_503_and_health_says_so(app_client, monkeypatch):
    service, client = app_client

    async def down(*args, **kwargs):
        raise EncoderUnavailable("Triton at 127.0.0.1:8001 is unavailable after 3 retries")

    monkeypatch.setattr(service.stack.encoder, "encode_texts", down)
    r = await client.post("/v1/search/text", json={"text": "red mug"})
    assert "after 3 retries" in error_message(r, 503) and r.json()["error"]["code"] == "encoder_unavailable"
    health = (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["components"]["encoder"]["status"] == "down"
    assert "not ready: encoder down" in error_message(await client.get("/health/ready"), 503)


async def test_an_unforeseen_failure_is_a_500_without_a_traceback(app_client, monkeypatch):
    service, client = app_client

    async def bug(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.stack.mongo, "facets", bug)
    r = await client.get("/v1/facets", headers={"X-Request-ID": "req-42"})
    message = error_message(r, 500)
    assert "req-42" in message and "secret" not in message
    assert (await client.get("/health")).status_code == 200  # and it keeps answering
