"""The app in-process (its real lifespan and stack, over ASGI): error mapping when a component fails
mid-request (failures injected into the real stack; the rest of the request path is the service's own), and
what needs settings the shared service does not have (photo URLs on a local server, the dev reset)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from pipeline.errors import EncoderUnavailable, StoreUnavailable
from tests.conftest import make_settings
from tests.service import error_message


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
    live = await client.get("/health/live", headers={"X-API-Key": ""})  # a probe sends no key
    assert live.status_code == 200 and live.json() == {"status": "alive"}  # no restart for a store outage


async def test_an_unforeseen_failure_is_a_500_without_a_traceback(app_client, monkeypatch):
    service, client = app_client

    async def bug(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.stack.mongo, "facets", bug)
    r = await client.get("/v1/facets", headers={"X-Request-ID": "req-42"})
    message = error_message(r, 500)
    assert "req-42" in message and "secret" not in message and r.headers["x-request-id"] == "req-42"
    assert (await client.get("/health")).status_code == 200  # and it keeps answering


@pytest.fixture
def image_server(tmp_path):
    """A local HTTP server with one photo (reachable only because the test allows private URLs)."""
    import functools
    import http.server
    import threading

    from tests.service import jpeg

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "red-mug.jpg").write_bytes(jpeg("red", "mug", 3))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_photo_urls_when_private_hosts_are_allowed_and_dev_reset(
    model_repository, mongo_uri, tmp_path, catalog, image_server
):
    from pipeline.api.app import create_app

    config = make_settings(model_repository, "edge", tmp_path, mongo_uri, api={"allow_private_urls": True})
    app = create_app(config, public_url="http://test")
    async with app.router.lifespan_context(app):
        token = json.loads(config.service_file().read_text())["token"]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers={"X-API-Key": token}) as c:
            await app.state.service.stack.ingest.ingest(catalog)
            photo = f"{image_server}/red-mug.jpg"
            hits = (await c.post("/v1/search/image", json={"url": photo, "top_k": 3})).json()["hits"]
            assert len(hits) == 3
            ranked = (await c.post("/v1/rank", json={"query_image_url": photo, "candidates": ["a", "b"]})).json()
            assert len(ranked["ranked"]) == 2
            put = await c.put("/v1/products/from-url", json={"name": "red mug url", "images": [photo]})
            assert put.json()["status"] == "added"
            assert "404" in error_message(await c.post("/v1/search/image", json={"url": f"{image_server}/nope.jpg"}),
                                          422)  # fmt: skip
            assert (await c.post("/v1/dev/reset")).json() == {"deleted": 25}
            assert (await c.get("/v1/stats")).json()["mongo"]["products"] == 0


async def test_a_write_during_a_reindex_waits_then_gets_503_busy(app_client, monkeypatch, catalog):
    """A product write waits for a running re-index (up to write_wait_s), then is refused with Retry-After."""
    service, client = app_client
    monkeypatch.setattr(service.stack.ingest.settings, "write_wait_s", 0.3)
    async with service.stack.ingest.lock.exclusive():
        row = json.loads(catalog.read_text().splitlines()[0])
        photo = (catalog.parent / row["images"][0]).read_bytes()
        row["images"] = ["data:image/png;base64," + base64.b64encode(photo).decode()]
        r = await client.put(f"/v1/products/{row['id']}", json=row)
        assert "re-index of 'products' is running" in error_message(r, 503)
        assert r.json()["error"]["code"] == "busy" and r.headers["Retry-After"] == "5"
        r = await client.delete(f"/v1/products/{row['id']}")
        assert r.json()["error"]["code"] == "busy"


async def test_a_request_past_the_deadline_is_stopped_with_503(
    model_repository, mongo_uri, tmp_path, monkeypatch, catalog
):
    """No call outlives its client by much: at PIPELINE__API__REQUEST_TIMEOUT_S the work is cancelled."""
    import asyncio

    from pipeline.api.app import create_app

    config = make_settings(model_repository, "edge", tmp_path, mongo_uri, api={"request_timeout_s": 0.5})
    app = create_app(config, public_url="http://test")
    cancelled = asyncio.Event()

    async with app.router.lifespan_context(app):
        stack = app.state.service.stack

        async def stuck(*args, **kwargs):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        monkeypatch.setattr(stack.encoder, "encode_images", stuck)
        token = json.loads(config.service_file().read_text())["token"]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        row = json.loads(catalog.read_text().splitlines()[0])
        photo = (catalog.parent / row["images"][0]).read_bytes()
        row["images"] = ["data:image/png;base64," + base64.b64encode(photo).decode()]
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers={"X-API-Key": token}) as c:
            r = await c.put(f"/v1/products/{row['id']}", json=row)
            assert "was stopped (PIPELINE__API__REQUEST_TIMEOUT_S)" in error_message(r, 503)
            assert cancelled.is_set()  # the work itself stopped, not just the answer
            assert (await c.get("/health/ready")).status_code == 200  # and the service goes on
