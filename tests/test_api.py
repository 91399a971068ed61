"""The service as a user meets it: a real uvicorn process (real mongod, Qdrant Edge) driven over HTTP."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from pipeline.catalog import read_catalog
from tests.catalogs import draw
from tests.images import encode
from tests.service import RunningService, service_env, start_service


@pytest.fixture(scope="module")
def svc(model_repository, catalog, mongo_uri, tmp_path_factory):
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


@pytest.fixture(scope="module")
def keys(svc: RunningService) -> dict[str, str]:
    with svc.client() as http:
        return {s: http.post("/v1/keys", json={"name": f"k-{s}", "scope": s}).json()["key"] for s in
                ("search", "write", "admin")}  # fmt: skip


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def _jpeg(color: str = "red", category: str = "mug", seed: int = 3) -> bytes:
    return encode(draw(color, category, seed), "JPEG")


# --- health, docs, metrics ---------------------------------------------------------------------------------


def test_health_needs_no_key_and_names_every_component(svc):
    body = httpx.get(f"{svc.url}/health").json()
    assert body["status"] == "ok"
    assert {n: c["status"] for n, c in body["components"].items()} == {"encoder": "ok", "qdrant": "ok", "mongo": "ok"}
    assert body["products"] == {"mongo": 24, "qdrant_points": 36}
    assert body["model"]["precision"] == "fp32" and body["process"]["rss_mb"] > 50 and body["uptime_s"] > 0
    assert httpx.get(f"{svc.url}/health/ready").status_code == 200
    assert httpx.get(f"{svc.url}/openapi.json").json()["paths"]["/v1/search/text"]["post"]
    assert httpx.get(f"{svc.url}/docs").status_code == 200


def test_metrics_in_prometheus_text_format(svc, keys):
    with svc.client(keys["search"]) as http:
        http.post("/v1/search/text", json={"text": "red mug"})
        http.post("/v1/search/text", json={"text": "red mug", "min_score": 0.9999})
    text = httpx.get(f"{svc.url}/metrics").text
    for needle in (
        'http_requests_total{handler="/v1/search/text",method="POST",status="200"}',
        'search_stage_seconds_count{kind="text",stage="embed"}',
        'search_stage_seconds_count{kind="text",stage="fusion"}',
        'search_stage_seconds_count{kind="text",stage="metadata"}',
        'search_top1_similarity_bucket{kind="text",le="1.0"}',
        'search_no_hit_total{kind="text"}',
        "embedding_cache_hits_total",
        "embedding_cache_misses_total",
        "event_log_queue_depth",
        "event_log_dropped_total",
        'catalog_products{store="mongodb"} 24.0',
        'model_info{backend="onnxruntime"',
    ):
        assert needle in text, needle


def test_every_response_carries_a_request_id(svc):
    r = httpx.get(f"{svc.url}/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{svc.url}/health").headers["x-request-id"]) == 32
    line = next(json.loads(x) for x in reversed(svc.logs().splitlines()) if '"abc-123"' in x)
    assert line["route"] == "/health" and line["status"] == 200 and "ms" in line


# --- keys ---------------------------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401_and_wrong_scope_403(svc, keys):
    r = httpx.post(f"{svc.url}/v1/search/text", json={"text": "red mug"})
    assert "API key is required" in _error(r, 401) and "Bearer" in r.headers["www-authenticate"]
    assert "unknown or revoked" in _error(httpx.post(f"{svc.url}/v1/search/text", json={"text": "x"},
                                                     headers={"X-API-Key": "psk_nope"}), 401)  # fmt: skip
    bearer = httpx.post(f"{svc.url}/v1/search/text", json={"text": "red mug"},
                        headers={"Authorization": f"Bearer {keys['search']}"})  # fmt: skip
    assert bearer.status_code == 200
    with svc.client(keys["search"]) as http:
        assert "needs write" in _error(http.delete("/v1/products/mug-red-0"), 403)
        assert "needs admin" in _error(http.get("/v1/keys"), 403)
    with svc.client(keys["write"]) as http:
        assert "needs admin" in _error(http.post("/v1/keys", json={"name": "x", "scope": "admin"}), 403)


def test_keys_are_stored_hashed_and_a_revoked_key_fails_next(svc, keys):
    with svc.client(keys["admin"]) as admin:
        created = admin.post("/v1/keys", json={"name": "to-revoke", "scope": "search"})
        assert created.status_code == 201
        key = created.json()["key"]
        listed = admin.get("/v1/keys").json()
        assert key not in json.dumps(listed) and {k["name"] for k in listed} >= {"to-revoke", "k-search"}
        assert "exists" in _error(admin.post("/v1/keys", json={"name": "to-revoke", "scope": "search"}), 409)
        with svc.client(key) as user:
            assert user.post("/v1/search/text", json={"text": "red mug"}).status_code == 200
            assert admin.delete("/v1/keys/to-revoke").json()["revoked"]
            assert "revoked" in _error(user.post("/v1/search/text", json={"text": "red mug"}), 401)
        assert _error(admin.delete("/v1/keys/to-revoke"), 404)


# --- search ---------------------------------------------------------------------------------------------


def test_text_search_with_filters(svc, keys):
    with svc.client(keys["search"]) as http:
        body = http.post("/v1/search/text", json={"text": "red mugs", "top_k": 5,
                                                  "filters": {"category": "mug", "max_price": 20}}).json()  # fmt: skip
    assert 1 <= len(body["hits"]) <= 5 and body["cached"] is False and body["model"]
    assert all(h["product"]["category"] == "mug" and h["product"]["price"] <= 20 for h in body["hits"])
    assert set(body["hits"][0]) == {"id", "score", "similarity", "matched", "image_index", "product"}
    assert body["took_ms"] > 0


def test_image_search_by_upload_and_similar(svc, keys):
    with svc.client(keys["search"]) as http:
        files = {"file": ("q.jpg", _jpeg("blue", "shirt", 5), "image/jpeg")}
        body = http.post("/v1/search/image", files=files, data={"top_k": "4", "filters": '{"color": "blue"}'}).json()
        assert len(body["hits"]) == 4 and all(h["product"]["color"] == "blue" for h in body["hits"])
        first = body["hits"][0]["id"]
        similar = http.get(f"/v1/products/{first}/similar", params={"top_k": 5}).json()
    assert len(similar["hits"]) == 5 and first not in [h["id"] for h in similar["hits"]]
    assert similar["cached"] is None and similar["kind"] == "product"


def test_rank_orders_candidates_without_the_index(svc, keys):
    candidates = ["blue shirt", "red mug", "yellow poster"]
    with svc.client(keys["search"]) as http:
        body = http.post("/v1/rank", json={"query": "red mug", "candidates": candidates}).json()
        assert body["ranked"][0]["candidate"] == "red mug"
        assert body["ranked"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert sorted(r["index"] for r in body["ranked"]) == [0, 1, 2]
        sims = [r["similarity"] for r in body["ranked"]]
        assert sims == sorted(sims, reverse=True)
        assert "exactly one" in _error(http.post("/v1/rank", json={"candidates": candidates}), 422)
        assert _error(http.post("/v1/rank", json={"query": "x", "candidates": ["one"]}), 422)
        assert _error(http.post("/v1/rank", json={"query": "x", "candidates": ["a"] * 1001}), 422)


# --- catalog ------------------------------------------------------------------------------------------------


def test_put_with_data_uri_is_indexed_before_the_answer_and_idempotent(svc, keys):
    uri = "data:image/jpeg;base64," + base64.b64encode(_jpeg("green", "poster", 77)).decode()
    row = {"name": "green poster new", "category": "poster", "color": "green", "price": 9.5, "images": [uri]}
    with svc.client(keys["write"]) as http:
        assert http.put("/v1/products/new-1", json=row).json() == {"id": "new-1", "status": "added", "error": None}
        assert http.put("/v1/products/new-1", json=row).json()["status"] == "unchanged"
        got = http.get("/v1/products/new-1").json()
        assert got["indexed"] is True and got["product"]["images"][0].endswith(".jpg")
        hits = http.get("/v1/products/new-1/similar", params={"top_k": 3}).json()["hits"]
        assert len(hits) == 3
        changed = http.put("/v1/products/new-1", json={**row, "price": 11.0}).json()
        assert changed["status"] == "updated"
        assert http.delete("/v1/products/new-1").json() == {"id": "new-1", "deleted": True}
        assert "unknown product" in _error(http.get("/v1/products/new-1"), 404)
        assert _error(http.delete("/v1/products/new-1"), 404)


def test_batch_reports_each_row(svc, keys):
    good = "data:image/png;base64," + base64.b64encode(encode(draw("red", "shirt", 9), "PNG")).decode()
    rows = [
        {"id": "b-1", "name": "red shirt b", "images": [good]},
        {"id": "b-2", "name": "broken", "images": ["data:image/jpeg;base64," + base64.b64encode(b"nope").decode()]},
        {"id": "b-1", "name": "dup", "images": [good]},
        {"id": "b-3", "name": "a file", "images": ["/etc/passwd"]},
        {"name": "no id", "images": [good]},
    ]
    with svc.client(keys["write"]) as http:
        body = http.post("/v1/products/batch", json={"products": rows}).json()
        assert [r["status"] for r in body["results"]] == ["added", "rejected", "rejected", "rejected", "rejected"]
        assert "not an image" in body["results"][1]["error"] and "duplicate" in body["results"][2]["error"]
        assert "http(s) URLs or data: URIs" in body["results"][3]["error"]
        assert (body["added"], body["rejected"]) == (1, 4)
        assert _error(http.get("/v1/products/b-2"), 404)
        http.delete("/v1/products/b-1")


def test_list_ids_paginates_and_stats_agree(svc, keys):
    with svc.client(keys["search"]) as http:
        first = http.get("/v1/products", params={"limit": 10}).json()
        second = http.get("/v1/products", params={"limit": 10, "cursor": first["next_cursor"]}).json()
        third = http.get("/v1/products", params={"limit": 10, "cursor": second["next_cursor"]}).json()
        stats = http.get("/v1/stats").json()
    ids = first["ids"] + second["ids"] + third["ids"]
    assert len(ids) == 24 == len(set(ids)) and ids == sorted(ids) and third["next_cursor"] is None
    assert stats["in_agreement"] is True and stats["mongo"]["products"] == 24 and stats["qdrant"]["products"] == 24


def test_dev_reset_exists_outside_production(svc):
    assert "/v1/dev/reset" in httpx.get(f"{svc.url}/openapi.json").json()["paths"]
