"""The service as a user meets it: a real uvicorn process (real mongod, Qdrant Edge) driven over HTTP."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.catalogs import draw
from tests.images import encode
from tests.service import error_message as _error
from tests.service import jpeg as _jpeg

# --- health, docs, metrics ---------------------------------------------------------------------------------


def test_health_needs_no_key_and_names_every_component(api_service):
    body = httpx.get(f"{api_service.url}/health").json()
    assert body["status"] == "ok"
    assert {n: c["status"] for n, c in body["components"].items()} == {"encoder": "ok", "qdrant": "ok", "mongo": "ok"}
    assert body["products"] == {"mongo": 24, "qdrant_points": 36}
    assert body["model"]["precision"] == "fp32" and body["process"]["rss_mb"] > 50 and body["uptime_s"] > 0
    assert httpx.get(f"{api_service.url}/health/ready").status_code == 200
    assert httpx.get(f"{api_service.url}/openapi.json").json()["paths"]["/v1/search/text"]["post"]
    assert httpx.get(f"{api_service.url}/docs").status_code == 200


def test_metrics_in_prometheus_text_format(api_service, api_keys):
    with api_service.client(api_keys["search"]) as http:
        http.post("/v1/search/text", json={"text": "red mug"})
        http.post("/v1/search/text", json={"text": "red mug", "min_score": 0.9999})
    text = httpx.get(f"{api_service.url}/metrics").text
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


def test_every_response_carries_a_request_id(api_service):
    r = httpx.get(f"{api_service.url}/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{api_service.url}/health").headers["x-request-id"]) == 32
    deadline = time.monotonic() + 10  # the line is written once the answer has gone out
    while '"abc-123"' not in api_service.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(json.loads(x) for x in reversed(api_service.logs().splitlines()) if '"abc-123"' in x)
    assert line["route"] == "/health" and line["status"] == 200 and "ms" in line


# --- keys ---------------------------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401_and_wrong_scope_403(api_service, api_keys):
    r = httpx.post(f"{api_service.url}/v1/search/text", json={"text": "red mug"})
    assert "API key is required" in _error(r, 401) and "Bearer" in r.headers["www-authenticate"]
    assert "unknown or revoked" in _error(httpx.post(f"{api_service.url}/v1/search/text", json={"text": "x"},
                                                     headers={"X-API-Key": "psk_nope"}), 401)  # fmt: skip
    bearer = httpx.post(f"{api_service.url}/v1/search/text", json={"text": "red mug"},
                        headers={"Authorization": f"Bearer {api_keys['search']}"})  # fmt: skip
    assert bearer.status_code == 200
    with api_service.client(api_keys["search"]) as http:
        assert "needs write" in _error(http.delete("/v1/products/mug-red-0"), 403)
        assert "needs admin" in _error(http.get("/v1/keys"), 403)
    with api_service.client(api_keys["write"]) as http:
        assert "needs admin" in _error(http.post("/v1/keys", json={"name": "x", "scope": "admin"}), 403)


def test_keys_are_stored_hashed_and_a_revoked_key_fails_next(api_service, api_keys):
    from pymongo import MongoClient

    from pipeline.stores.keys import digest

    with api_service.client(api_keys["admin"]) as admin:
        created = admin.post("/v1/keys", json={"name": "to-revoke", "scope": "search"})
        assert created.status_code == 201
        key = created.json()["key"]
        env = api_service.env
        with MongoClient(env["PIPELINE__MONGO__URI"]) as mongo:
            stored = list(mongo[env["PIPELINE__MONGO__DATABASE"]]["api_keys"].find({"name": "to-revoke"}))
        assert len(stored) == 1 and stored[0]["_id"] == digest(key) and key not in json.dumps(stored, default=str)
        listed = admin.get("/v1/keys").json()
        assert key not in json.dumps(listed) and {k["name"] for k in listed} >= {"to-revoke", "k-search"}
        assert "exists" in _error(admin.post("/v1/keys", json={"name": "to-revoke", "scope": "search"}), 409)
        with api_service.client(key) as user:
            assert user.post("/v1/search/text", json={"text": "red mug"}).status_code == 200
            assert admin.delete("/v1/keys/to-revoke").json()["revoked"]
            assert "revoked" in _error(user.post("/v1/search/text", json={"text": "red mug"}), 401)
        assert _error(admin.delete("/v1/keys/to-revoke"), 404)


# --- search ---------------------------------------------------------------------------------------------


def test_text_search_with_filters(api_service, api_keys):
    with api_service.client(api_keys["search"]) as http:
        body = http.post("/v1/search/text", json={"text": "red mugs", "top_k": 5,
                                                  "filters": {"category": "mug", "max_price": 20}}).json()  # fmt: skip
    assert 1 <= len(body["hits"]) <= 5 and body["cached"] is False and body["model"]
    assert all(h["product"]["category"] == "mug" and h["product"]["price"] <= 20 for h in body["hits"])
    assert set(body["hits"][0]) == {"id", "score", "similarity", "matched", "image_index", "product"}
    assert body["took_ms"] > 0


def test_image_search_by_upload_and_similar(api_service, api_keys):
    with api_service.client(api_keys["search"]) as http:
        files = {"file": ("q.jpg", _jpeg("blue", "shirt", 5), "image/jpeg")}
        body = http.post("/v1/search/image", files=files, data={"top_k": "4", "filters": '{"color": "blue"}'}).json()
        assert len(body["hits"]) == 4 and all(h["product"]["color"] == "blue" for h in body["hits"])
        first = body["hits"][0]["id"]
        similar = http.get(f"/v1/products/{first}/similar", params={"top_k": 5}).json()
    assert len(similar["hits"]) == 5 and first not in [h["id"] for h in similar["hits"]]
    assert similar["cached"] is None and similar["kind"] == "product"


def test_rank_orders_candidates_without_the_index(api_service, api_keys):
    candidates = ["blue shirt", "red mug", "yellow poster"]
    with api_service.client(api_keys["search"]) as http:
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


def test_put_with_data_uri_is_indexed_before_the_answer_and_idempotent(api_service, api_keys):
    uri = "data:image/jpeg;base64," + base64.b64encode(_jpeg("green", "poster", 77)).decode()
    row = {"name": "green poster new", "category": "poster", "color": "green", "price": 9.5, "images": [uri]}
    with api_service.client(api_keys["write"]) as http:
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


def test_batch_reports_each_row(api_service, api_keys):
    good = "data:image/png;base64," + base64.b64encode(encode(draw("red", "shirt", 9), "PNG")).decode()
    rows = [
        {"id": "b-1", "name": "red shirt b", "images": [good]},
        {"id": "b-2", "name": "broken", "images": ["data:image/jpeg;base64," + base64.b64encode(b"nope").decode()]},
        {"id": "b-1", "name": "dup", "images": [good]},
        {"id": "b-3", "name": "a file", "images": ["/etc/passwd"]},
        {"name": "no id", "images": [good]},
    ]
    with api_service.client(api_keys["write"]) as http:
        body = http.post("/v1/products/batch", json={"products": rows}).json()
        assert [r["status"] for r in body["results"]] == ["added", "rejected", "rejected", "rejected", "rejected"]
        assert "not an image" in body["results"][1]["error"] and "duplicate" in body["results"][2]["error"]
        assert "http(s) URLs or data: URIs" in body["results"][3]["error"]
        assert (body["added"], body["rejected"]) == (1, 4)
        assert _error(http.get("/v1/products/b-2"), 404)
        http.delete("/v1/products/b-1")


def test_list_ids_paginates_and_stats_agree(api_service, api_keys):
    with api_service.client(api_keys["search"]) as http:
        first = http.get("/v1/products", params={"limit": 10}).json()
        second = http.get("/v1/products", params={"limit": 10, "cursor": first["next_cursor"]}).json()
        third = http.get("/v1/products", params={"limit": 10, "cursor": second["next_cursor"]}).json()
        assert "needs admin" in _error(http.get("/v1/stats"), 403)  # it reads every id
    with api_service.client(api_keys["admin"]) as http:
        stats = http.get("/v1/stats").json()
    ids = first["ids"] + second["ids"] + third["ids"]
    assert len(ids) == 24 == len(set(ids)) and ids == sorted(ids) and third["next_cursor"] is None
    assert stats["in_agreement"] is True and stats["mongo"]["products"] == 24 and stats["qdrant"]["products"] == 24


def test_service_file_is_private_to_its_user(api_service):
    import stat

    path = Path(api_service.env["PIPELINE__QDRANT__PATH"]).parent / "service.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text())["url"] == api_service.url


def test_dev_reset_exists_outside_production(api_service):
    assert "/v1/dev/reset" in httpx.get(f"{api_service.url}/openapi.json").json()["paths"]
