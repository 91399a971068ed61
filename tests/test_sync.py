"""Catalog sources and ``sync`` against real servers: a real PostgreSQL (a fixture starts Debian's server on a
free loopback port), SQLite files, a MongoDB collection on the test mongod, and the service's real stack and
job runner in-process. Ingest and sync jobs, deletions of rows gone from the source, single-product refresh,
bad rows, a wrong query, a source that is down, and a sync resumed after its runner stopped under it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient

from tests.catalogs import products
from tests.conftest import asgi_service, make_settings, wait_job
from tests.postgres import Postgres
from tests.service import error_message

COLUMNS = "sku, title, description, brand, category, color, price, images, extra, updated_at"
QUERY = f"SELECT {COLUMNS} FROM products"
MAPPING = {"id": "sku", "name": "title"}


@pytest.fixture(scope="module")
def pg():
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("shop")
    return folder, products(folder)


def _pg_table(pg: Postgres, rows: list[dict]) -> str:
    """A fresh database with a products table as a shop keeps it: its own column names, one image or a JSON
    array of several in one column, a column the schema does not know, and an updated_at per row."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg.url(name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE products (sku text PRIMARY KEY, title text, description text, brand text, category text,"
            " color text, price numeric(10, 2), images text, extra text, updated_at timestamptz NOT NULL)"
        )
        for n, r in enumerate(rows):
            images = r["images"][0] if len(r["images"]) == 1 else json.dumps(r["images"])
            conn.execute(
                "INSERT INTO products VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " timestamptz '2026-01-01 00:00:00+00' + %s * interval '1 minute')",
                (r["id"], r["name"], r["description"], r["brand"], r["category"], r["color"], r["price"], images,
                 f"x{n}", n),
            )  # fmt: skip
    return pg.url(name)


def _pg(url: str, sql: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


async def _run(client, kind: str, **params) -> dict:
    r = await client.post("/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 202, r.text
    return await wait_job(client, r.json()["id"])


def _source(url: str, folder: Path, **extra) -> dict:
    return {"type": "sql", "url": url, "query": QUERY, "mapping": MAPPING, "updated_at": "updated_at",
            "image_base": str(folder), **extra}  # fmt: skip


async def test_postgres_sync_adds_updates_and_deletes_only_what_changed(
    pg, rows, model_repository, mongo_uri, tmp_path
):
    folder, items = rows
    url = _pg_table(pg, items)
    source = _source(url, folder)
    config = make_settings(model_repository, "edge", tmp_path, mongo_uri, source={k: v for k, v in source.items()})
    async with asgi_service(config) as (svc, client):
        first = await _run(client, "sync")
        assert first["state"] == "succeeded", first
        assert {k: first["result"][k] for k in ("added", "updated", "rejected")} == {"added": 24, "updated": 0,
                                                                                     "rejected": 0}  # fmt: skip
        assert first["result"]["watermark"].startswith("2026-01-01 00:23")
        mug = (await client.get("/v1/products/mug-red-0")).json()["product"]
        assert mug["name"] == "red mug 0" and mug["price"] == items[0]["price"] and mug["attributes"] == {"extra": "x0"}
        two = next(r for r in items if len(r["images"]) == 2)  # a JSON array in the images column
        assert len((await client.get(f"/v1/products/{two['id']}")).json()["product"]["images"]) == 2

        # A product from the API, which the source never had: a sync never deletes it.
        own = {"name": "own mug", "images": [str(folder / items[0]["images"][0])]}
        assert (await client.put("/v1/products/own-1", json=own)).status_code == 200

        _pg(url, "UPDATE products SET title = 'crimson mug', updated_at = now() WHERE sku = 'mug-red-0'")
        _pg(url, "DELETE FROM products WHERE sku = 'poster-blue-1'")
        _pg(url, "INSERT INTO products SELECT 'mug-new', 'new mug', description, brand, category, color, price, "
                 "images, extra, now() FROM products WHERE sku = 'mug-blue-0'")  # fmt: skip
        # A plain sync adds and updates; a row gone from the source stays until a sync is asked to delete.
        second = await _run(client, "sync")
        assert second["state"] == "succeeded", second
        got = second["result"]
        assert (got["added"], got["updated"], got["rejected"]) == (1, 1, 0) and "deleted" not in got, got
        assert got["unchanged"] <= 1  # only the rows at the last watermark are read again
        assert (await client.get("/v1/products/poster-blue-1")).status_code == 200
        third = await _run(client, "sync", delete_missing=True)
        got = third["result"]
        assert (third["state"], got["added"], got["updated"], got["deleted"]) == ("succeeded", 0, 0, 1), third
        assert (await client.get("/v1/products/mug-red-0")).json()["product"]["name"] == "crimson mug"
        assert (await client.get("/v1/products/poster-blue-1")).status_code == 404
        assert (await client.get("/v1/products/mug-new")).status_code == 200
        assert (await client.get("/v1/products/own-1")).status_code == 200
        ids = await svc.stack.index.product_ids()
        assert "poster-blue-1" not in ids and {"mug-new", "own-1"} <= ids

        # Refresh: one product read again by id, re-embedded, with no sync.
        _pg(url, "UPDATE products SET color = 'navy' WHERE sku = 'shirt-blue-0'")
        r = await client.post("/v1/products/shirt-blue-0/refresh")
        assert r.status_code == 200 and r.json()["status"] == "updated", r.text
        assert (await client.get("/v1/products/shirt-blue-0")).json()["product"]["color"] == "navy"
        r = await client.post("/v1/products/poster-blue-1/refresh")
        assert "has no product 'poster-blue-1'" in error_message(r, 404)


async def test_bad_rows_a_wrong_query_and_a_source_that_is_down(pg, rows, app_client):
    folder, items = rows
    url = _pg_table(pg, items[:6])
    _pg(url, "UPDATE products SET title = '' WHERE sku = 'mug-red-0'")
    _pg(url, "UPDATE products SET price = -3 WHERE sku = 'mug-red-1'")
    _pg(url, "UPDATE products SET images = 'img/nowhere.jpg' WHERE sku = 'shirt-red-0'")
    _, client = app_client
    job = await _run(client, "ingest", source=_source(url, folder))
    assert job["state"] == "succeeded" and job["result"]["added"] == 3 and job["result"]["rejected"] == 3, job
    rejected = {e["id"]: e["message"] for e in job["errors"]}
    assert set(rejected) == {"mug-red-0", "mug-red-1", "shirt-red-0"}, rejected
    assert "name" in rejected["mug-red-0"] and "price" in rejected["mug-red-1"]
    assert "nowhere.jpg" in rejected["shirt-red-0"]
    assert all(e["row"] is not None for e in job["errors"])
    before = (await client.get("/v1/stats")).json()

    wrong = await _run(client, "ingest", source=_source(url, folder, query="SELECT nope FROM products"))
    assert wrong["state"] == "failed" and 'column "nope" does not exist' in wrong["message"], wrong
    down = _source(f"postgresql://postgres@127.0.0.1:{_closed_port()}/shop", folder)
    failed = await _run(client, "sync", source=down)
    assert failed["state"] == "failed" and "cannot connect" in failed["message"], failed
    assert "postgresql://postgres@127.0.0.1" in failed["message"]
    assert (await client.get("/v1/stats")).json() == before  # nothing half-written

    # A password never leaves the service: hidden in job records, in messages too.
    secret = _source(f"postgresql://postgres:s3cret@127.0.0.1:{_closed_port()}/shop", folder)
    job = await _run(client, "sync", source=secret)
    shown = json.dumps(job)
    assert job["state"] == "failed" and "s3cret" not in shown and "***" in shown, shown
    # Refresh without a configured source, and with one that is down: clear errors, not a 500.
    r = await client.post("/v1/products/mug-red-0/refresh")
    assert "no catalog source is configured" in error_message(r, 422)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refresh_answers_502_when_the_source_is_down(model_repository, mongo_uri, tmp_path, rows):
    folder, _ = rows
    source = _source(f"postgresql://postgres@127.0.0.1:{_closed_port()}/shop", folder, timeout_s=2)
    config = make_settings(model_repository, "edge", tmp_path, mongo_uri, source=source)
    async with asgi_service(config) as (_, client):
        r = await client.post("/v1/products/mug-red-0/refresh")
        assert "cannot connect" in error_message(r, 502)


async def test_a_sync_resumed_after_its_runner_stopped_counts_every_product_once(
    pg, rows, model_repository, mongo_uri, tmp_path
):
    folder, items = rows
    url = _pg_table(pg, items)
    config = make_settings(model_repository, "edge", tmp_path, mongo_uri, ingest={"batch_size": 4})
    async with asgi_service(config) as (svc, client):
        real = svc.stack.ingest._upsert  # one batch's write
        calls, stuck = 0, asyncio.Event()

        async def upsert(*args, **kw):
            nonlocal calls
            calls += 1
            if calls == 3:  # the third batch is written, then the process "dies" before it is reported
                await real(*args, **kw)
                stuck.set()
                await asyncio.Event().wait()
            return await real(*args, **kw)

        svc.stack.ingest._upsert = upsert
        r = await client.post("/v1/jobs", json={"kind": "sync", "params": {"source": _source(url, folder)}})
        await asyncio.wait_for(stuck.wait(), 60)
        await svc.runner.aclose()  # a shutdown under the job: it is handed back, to resume
        held = (await client.get(f"/v1/jobs/{r.json()['id']}")).json()
        assert held["state"] == "queued" and held["progress"]["done"] == 8, held
        svc.stack.ingest._upsert = real
        await svc.runner.start()
        svc.runner.wake()
        done = await wait_job(client, r.json()["id"])
        assert done["state"] == "succeeded", done
        result = done["result"]
        assert (result["added"], result["updated"], result["rejected"]) == (24, 0, 0), result
        assert len(await svc.stack.index.product_ids()) == 24


async def test_mongodb_collection_source_with_the_design_cards_sample(app_client, mongo_uri, rows):
    folder, items = rows
    sample = json.loads((Path(__file__).parent / "data" / "product-metadata.json").read_bytes())[0]
    sample["image_path"] = str(folder / items[0]["images"][0])
    database = f"shop_{uuid.uuid4().hex[:8]}"
    with MongoClient(mongo_uri) as mongo:
        coll = mongo[database]["product_metadata"]
        # The second document names its fields as no alias does: the mapping is what makes it a product.
        coll.insert_many([sample, {"label": "green shirt", "picture": str(folder / items[1]["images"][0]), "sku": "g1"},
                          {"title": "hidden", "image": "x.jpg", "draft": True}])  # fmt: skip
        source = {"type": "mongo", "url": mongo_uri, "database": database, "collection": "product_metadata",
                  "filter": {"draft": {"$ne": True}}, "mapping": {"name": "label", "images": "picture"}}  # fmt: skip
        _, client = app_client
        job = await _run(client, "ingest", source=source)
        assert job["state"] == "succeeded" and job["result"]["added"] == 2 and job["result"]["rejected"] == 0, job
        got = (await client.get("/v1/products/1")).json()["product"]
        assert got["attributes"]["SKU"] == "SKU-SONY-WH1000XM5-BEIGE" and got["category"].startswith("Electronics")
        second = coll.find_one({"sku": "g1"})
        assert second is not None
        mapped = (await client.get(f"/v1/products/{second['_id']}")).json()["product"]  # no id field: its _id
        assert mapped["name"] == "green shirt" and len(mapped["images"]) == 1, mapped
        hits = await client.post("/v1/search/text", json={"text": "headphones", "filters": {"category": "Audio"}})
        assert hits.status_code == 200 and [h["id"] for h in hits.json()["hits"]] == ["1"], hits.text

        coll.delete_one({"sku": "g1"})
        synced = await _run(client, "sync", source=source, delete_missing=True)
        assert synced["state"] == "succeeded" and synced["result"]["deleted"] == 1, synced
        assert (await client.get(f"/v1/products/{second['_id']}")).status_code == 404

        # A source that answers with nothing at all (an emptied collection, a wrong filter) deletes nothing.
        coll.delete_many({})
        emptied = await _run(client, "sync", source=source, delete_missing=True)
        assert emptied["state"] == "failed" and "refusing to delete" in emptied["message"], emptied
        assert (await client.get("/v1/products/1")).status_code == 200


def test_cli_ingests_a_sqlite_query_without_a_service(model_repository, mongo_uri, tmp_path, rows):
    """``python -m pipeline ingest --sql-url sqlite:///... --query ...`` as a user types it, no service running."""
    from tests.service import service_env

    folder, items = rows
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (code TEXT, label TEXT, pics TEXT, cost REAL)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)",
                         [(r["id"], r["name"], "|".join(r["images"]), r["price"]) for r in items[:5]]
                         + [("bad", "", "img/x.jpg", 1.0)])  # fmt: skip
    env = {**os.environ, **service_env(model_repository, tmp_path / "qdrant", mongo_uri, "t_sql_cli")}
    cmd = [sys.executable, "-m", "pipeline", "ingest", "--sql-url", f"sqlite:///{db}",
           "--query", "SELECT code, label, pics AS images, cost AS price FROM items;",
           "--map", "id=code", "--map", "name=label", "--image-base", str(folder), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr  # a rejected row is reported, as with a catalog file
    job = json.loads(proc.stdout)
    assert job["state"] == "succeeded" and job["submitted_by"] == "cli", job
    assert (job["result"]["added"], job["result"]["rejected"]) == (5, 1), job
    assert [e["id"] for e in job["errors"]] == ["bad"] and "name" in job["errors"][0]["message"]


async def test_a_by_id_query_and_urls_as_users_type_them(pg, rows):
    from pipeline.errors import SourceError
    from pipeline.sources import SqlSpec, open_source

    folder, items = rows
    url = _pg_table(pg, items[:3])
    by_id = "SELECT sku, title, images, 'from the by-id query' AS note FROM products WHERE sku = :id"
    spec = SqlSpec(url=url, query=QUERY, by_id_query=by_id, mapping=MAPPING, image_base=str(folder))
    async with open_source(spec) as reader:
        row = await reader.by_id(items[0]["id"])
        assert row is not None and row.product is not None
        assert row.product.name == items[0]["name"] and row.product.attributes == {"note": "from the by-id query"}
        assert await reader.by_id("no-such-sku") is None
    # mysql:// as users type it goes through PyMySQL (mysqlclient is not installed); no server: a clear error.
    mysql = SqlSpec(url=f"mysql://shop@127.0.0.1:{_closed_port()}/shop", query="SELECT 1 AS id", timeout_s=2)
    async with open_source(mysql) as reader:
        assert reader.source.engine.dialect.driver == "pymysql"  # type: ignore[attr-defined]
        with pytest.raises(SourceError, match="cannot connect"):
            await reader.count()
    from pipeline.errors import InvalidInput

    with pytest.raises(InvalidInput, match="is not a database URL"):
        async with open_source(SqlSpec(url="not a url", query="SELECT 1")):
            pass


def test_a_named_source_keeps_its_key_when_its_query_is_edited():
    from pipeline.config import SourceSettings
    from pipeline.sources import SqlSpec, source_key, spec_from_settings

    url = "postgresql://shop:secret@db/shop"
    a, b = SqlSpec(url=url, query="SELECT * FROM p"), SqlSpec(url=url, query="SELECT *, x FROM p")
    assert source_key(a) != source_key(b)  # unnamed: another query is another source
    assert source_key(a) == source_key(a.model_copy(update={"url": "postgresql://shop:changed@db/shop"}))
    named = [s.model_copy(update={"name": "shop"}) for s in (a, b)]
    assert source_key(named[0]) == source_key(named[1]) == "sql:shop"
    configured = spec_from_settings(SourceSettings(type="sql", url=url, query="SELECT 1 AS id"))
    assert source_key(configured) == "sql:catalog"
