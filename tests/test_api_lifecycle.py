"""The service's life: the CLI as its client (same answers as in-process), SIGTERM under load, MongoDB
going away, and the production guards. Each test runs its own service process."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from tests.catalogs import draw, write_bad_catalog
from tests.images import encode
from tests.service import error_message, service_env, start_service


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=full, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _env(model_repository: Path, root: Path, mongo_uri: str, **extra: str) -> dict[str, str]:
    return service_env(model_repository, root / "qdrant", mongo_uri, f"t_{uuid.uuid4().hex[:10]}",
                       PIPELINE__ENCODER__PRECISION="fp32", **extra)  # fmt: skip


def _hits(proc: subprocess.CompletedProcess[str]) -> list[tuple[str, float]]:
    return [(h["product_id"], round(h["similarity"], 5)) for h in json.loads(proc.stdout)["hits"]]


@pytest.mark.slow
def test_cli_gives_the_same_answers_through_the_service_and_in_process(model_repository, catalog, mongo_uri,
                                                                        tmp_path):  # fmt: skip
    env = _env(model_repository, tmp_path, mongo_uri)
    photo = tmp_path / "q.png"
    photo.write_bytes(encode(draw("red", "shirt", 3), "PNG"))
    queries = [["--text", "red mug", "--top-k", "5", "--category", "mug"], ["--image", str(photo)],
               ["--product-id", "mug-red-0", "--top-k", "4"]]  # fmt: skip

    bad_catalog, expected_bad = write_bad_catalog(tmp_path / "bad")

    def run_all() -> tuple[dict, list, dict]:
        ingest = json.loads(_cli(env, "ingest", str(catalog), "--json").stdout)
        bad = json.loads(_cli(env, "ingest", str(bad_catalog), "--json").stdout)["rejected"]
        answers = [_hits(_cli(env, "search", *q, "--json")) for q in queries]
        status = json.loads(_cli(env, "status", "--json").stdout)
        return ingest, [bad, *answers], status

    first_ingest, in_process, status_alone = run_all()  # no service: the CLI opens the stack itself
    assert first_ingest["added"] == 24 and all(in_process)
    assert [r["line"] for r in in_process[0]] == sorted(expected_bad)  # each bad row, by its line

    service = start_service(env, tmp_path / "service.log")
    try:
        ingest, through, status = run_all()  # the service owns the data now: the CLI must go through it
        # the bad catalog's four good rows are the first four products with other image paths: re-stored
        assert (ingest["unchanged"], ingest["updated"], ingest["rejected"]) == (20, 4, [])
        assert through == in_process
        assert status["in_agreement"] and status["mongo"]["products"] == status_alone["mongo"]["products"] == 24
        requests = [json.loads(line) for line in service.logs().splitlines() if '"pipeline.access"' in line]
        # the ingest ran as the service's job
        assert {r["route"] for r in requests if r["key"] == "local"} >= {
            "/v1/search/text", "/v1/search/image", "/v1/products/{product_id:path}/similar", "/v1/jobs",
            "/v1/jobs/{job_id}", "/v1/stats"}  # fmt: skip
        bad = _cli(env, "search", "--product-id", "[/x]", check=False)
        assert bad.returncode == 1 and bad.stderr.strip() == "error: unknown product id '[/x]'"
        deleted = _cli(env, "delete", "mug-red-0", "nope", check=False)
        assert deleted.returncode == 1 and "deleted 1 product" in deleted.stderr and "nope" in deleted.stderr
        key = _cli(env, "keys", "create", "--name", "cli", "--scope", "search").stdout.strip()
        with httpx.Client(base_url=service.url, headers={"X-API-Key": key}) as http:
            assert http.post("/v1/search/text", json={"text": "red mug"}).status_code == 200
            _cli(env, "keys", "revoke", "cli")
            assert "revoked" in error_message(http.post("/v1/search/text", json={"text": "red mug"}), 401)
        # Another machine's CLI (a URL and a write key, no local token): image files travel as data: URIs.
        remote_catalog = tmp_path / "remote.jsonl"
        rows = [json.loads(line) for line in catalog.read_text().splitlines()[:3]]
        remote_catalog.write_text("".join(json.dumps({**r, "id": "r-" + r["id"], "images": [
            str(catalog.parent / p) for p in r["images"]]}) + "\n" for r in rows))  # fmt: skip
        writer = _cli(env, "keys", "create", "--name", "remote", "--scope", "write").stdout.strip()
        remote_env = {**env, "PIPELINE__API__URL": service.url, "PIPELINE__API__KEY": writer}
        assert json.loads(_cli(remote_env, "ingest", str(remote_catalog), "--json").stdout)["added"] == 3
        with httpx.Client(base_url=service.url, headers={"X-API-Key": writer}) as http:
            stored = http.get("/v1/products/r-" + rows[0]["id"]).json()
        assert stored["indexed"] and "/uploads/" in stored["product"]["images"][0]
        # A re-index is the service's job now (it no longer needs the service stopped); searches go on after it.
        before = _hits(_cli(env, "search", *queries[0], "--json"))
        reindexed = _cli(env, "reindex")
        assert "reindexed 26 products" in reindexed.stderr
        assert _hits(_cli(env, "search", *queries[0], "--json")) == before
    finally:
        service.stop()
    assert not (tmp_path / "service.json").exists()  # gone with the service: the CLI works alone again
    after = _hits(_cli(env, "search", *queries[0], "--json"))  # in-process again, with the service's delete seen
    assert len(after) == 5 and "mug-red-0" not in dict(after)


@pytest.mark.slow
def test_sigterm_under_load_answers_or_refuses_cleanly_and_keeps_accepted_events(
    model_repository, catalog, mongo_uri, tmp_path
):
    env = _env(model_repository, tmp_path, mongo_uri)
    service = start_service(env, tmp_path / "service.log")
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    for row in rows:
        row["images"] = [str(catalog.parent / p) for p in row["images"]]
    with service.client() as http:
        assert http.post("/v1/products/batch", json={"products": rows}).json()["added"] == 24
    outcomes: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def caller(k: int) -> None:
        with service.client() as http:
            for i in range(200):  # bounded: stops at the first refusal, or after 200 queries, or 30 s
                if time.monotonic() > deadline:
                    return
                try:
                    status = str(http.post("/v1/search/text", json={"text": f"query {k} {i}"}).status_code)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                with lock:
                    outcomes.append(status)
                if not status.isdigit():
                    return

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(caller, k) for k in range(16)]
        started = time.monotonic()
        while len(outcomes) < 100 and time.monotonic() - started < 60 and service.proc.poll() is None:
            time.sleep(0.01)
        code = service.stop()
        for f in futures:
            f.result()
    assert code in (0, -15) and "Application shutdown complete" in service.logs()
    answered = outcomes.count("200")
    assert answered >= 100 and not [o for o in outcomes if o.isdigit() and o != "200"], set(outcomes)
    with MongoClient(mongo_uri) as client:
        logged = client[env["PIPELINE__MONGO__DATABASE"]]["events"].count_documents({"kind": "text", "error": None})
    assert logged == answered  # every answered query's event reached MongoDB before the process ended


@pytest.mark.slow
def test_mongodb_down_hits_still_returned_and_flagged(model_repository, catalog, tmp_path):
    from pipeline.stores.mongod import ManagedMongod

    mongod = ManagedMongod(tmp_path / "mongo")
    uri = mongod.start_sync()
    # The follower polls MongoDB all the time: SIGTERM lands while one of its calls waits for the lost server
    env = _env(model_repository, tmp_path, uri, PIPELINE__MONGO__TIMEOUT_MS="2000", PIPELINE__MODELS__FOLLOW_S="0.02")
    service = start_service(env, tmp_path / "service.log")
    try:
        rows = [json.loads(line) for line in catalog.read_text().splitlines()]
        for row in rows:
            row["images"] = [str(catalog.parent / p) for p in row["images"]]
        with service.client() as http:
            http.post("/v1/products/batch", json={"products": rows})
            key = http.post("/v1/keys", json={"name": "shop", "scope": "search"}).json()["key"]
        with service.client(key) as http:
            assert http.get("/v1/products", params={"limit": 1}).status_code == 200  # the key is known now
            mongod.stop_sync()
            body = http.post("/v1/search/text", json={"text": "red mug"}).json()
            assert body["metadata_missing"] is True and body["hits"] and body["hits"][0]["product"] is None
            health = httpx.get(f"{service.url}/health").json()
            assert health["status"] == "degraded" and health["components"]["mongo"]["status"] == "down"
            assert health["components"]["encoder"]["status"] == "ok"
            assert httpx.get(f"{service.url}/health/ready").status_code == 200  # it still answers queries
            assert "MongoDB" in error_message(http.get("/v1/products/mug-red-0"), 503)
        # It still stops on SIGTERM: a driver call that swallowed the cancellation once hung the shutdown
        started = time.monotonic()
        assert service.stop(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 30
    finally:
        service.stop()
        mongod.stop_sync()
    assert "Traceback" not in service.logs()


def test_production_refuses_to_start_without_tls_or_a_key(model_repository, mongo_uri, tmp_path):
    env = _env(model_repository, tmp_path, mongo_uri, PIPELINE__ENVIRONMENT="production")
    proc = _cli(env, "serve", "--port", "1", check=False)
    assert proc.returncode == 1 and "production needs TLS" in proc.stderr and "Traceback" not in proc.stderr
    env["PIPELINE__API__BEHIND_PROXY"] = "true"
    proc = _cli(env, "serve", "--port", "1", check=False)
    assert proc.returncode != 0 and "production needs an API key" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_production_has_no_development_routes(model_repository, mongo_uri, tmp_path):
    env = _env(model_repository, tmp_path, mongo_uri, PIPELINE__ENVIRONMENT="production",
               PIPELINE__API__BEHIND_PROXY="true")  # fmt: skip
    key = _cli(env, "keys", "create", "--name", "ops", "--scope", "admin").stdout.strip()
    service = start_service(env, tmp_path / "service.log")
    try:
        assert "/v1/dev/reset" not in httpx.get(f"{service.url}/openapi.json").json()["paths"]
        r = httpx.post(f"{service.url}/v1/dev/reset", headers={"X-API-Key": key})
        assert error_message(r, 404)
    finally:
        service.stop()
