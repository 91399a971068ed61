"""Background jobs through the API (the app in-process with its real stack and runner): submit, progress,
results with row numbers, cancel, the kinds, bad parameters and scopes."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from pipeline.jobs.model import JobKind
from pipeline.stores.keys import Scope
from tests.catalogs import write_bad_catalog
from tests.conftest import wait_job
from tests.service import error_message


async def _submit(client, kind: str, **params) -> dict:
    r = await client.post("/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "queued"
    return r.json()


async def test_ingest_job_runs_in_the_background_with_progress_and_row_errors(app_client, tmp_path, catalog):
    _, client = app_client
    bad, expected = write_bad_catalog(tmp_path / "bad")
    job = await wait_job(client, (await _submit(client, "ingest", path=str(bad)))["id"])
    assert job["state"] == "succeeded", job
    rows = {e["row"]: e["message"] for e in job["errors"]}
    assert set(rows) == set(expected) and job["error_count"] == len(expected)
    for line, fragment in expected.items():
        assert fragment in rows[line], (line, rows[line])
    assert job["result"]["rejected"] == len(expected) and job["result"]["added"] > 0
    assert job["progress"]["done"] == job["progress"]["total"] and job["started"] and job["finished"]

    # The same catalog again: nothing to embed. Then every product, forced: each re-embedded once.
    again = await wait_job(client, (await _submit(client, "ingest", path=str(bad)))["id"])
    assert again["result"]["unchanged"] == job["result"]["added"] and again["result"]["added"] == 0
    everything = await wait_job(client, (await _submit(client, "embed-all", force=True))["id"])
    assert everything["result"]["updated"] == job["result"]["added"], everything
    listed = (await client.get("/v1/jobs", params={"state": "succeeded"})).json()["jobs"]
    assert [j["id"] for j in listed][:3] == [everything["id"], again["id"], job["id"]]


async def test_embed_delete_and_reindex_jobs(app_client, catalog):
    svc, client = app_client
    ingest = await wait_job(client, (await _submit(client, "ingest", path=str(catalog)))["id"])
    ids = sorted(await svc.stack.index.product_ids())
    assert ingest["result"]["added"] == len(ids)
    embed = await wait_job(client, (await _submit(client, "embed", ids=[ids[0], "no-such-id"]))["id"])
    assert embed["result"]["unchanged"] == 1 and embed["errors"] == [
        {"row": None, "id": "no-such-id", "message": "no such product"}
    ]
    gone = await wait_job(client, (await _submit(client, "delete", ids=ids[:3]))["id"])
    assert gone["result"] == {"deleted": 3, "unknown": 0}
    assert ids[0] not in await svc.stack.index.product_ids()
    reindex = await wait_job(client, (await _submit(client, "reindex"))["id"])
    assert reindex["state"] == "succeeded" and reindex["result"]["reindexed"] == len(ids) - 3


async def test_jobs_on_the_same_collection_submitted_at_once_run_one_after_another(app_client, catalog):
    """An ingest, a re-index and a delete submitted together: the runner takes them one at a time in order
    (the write lock would keep them apart across processes too), and the end state is what running them in
    that order gives: every product in both stores once, the deleted ones nowhere."""
    _, client = app_client
    ids = [json.loads(line)["id"] for line in catalog.read_text().splitlines() if line.strip()]
    jobs = [await _submit(client, "ingest", path=str(catalog)), await _submit(client, "reindex"),
            await _submit(client, "delete", ids=ids[:2])]  # fmt: skip
    done = [await wait_job(client, j["id"]) for j in jobs]
    assert [d["state"] for d in done] == ["succeeded"] * 3, done
    assert done[0]["finished"] <= done[1]["started"] and done[1]["finished"] <= done[2]["started"], done
    assert done[1]["result"]["reindexed"] == len(ids) and done[2]["result"]["deleted"] == 2
    stats = (await client.get("/v1/stats")).json()
    assert stats["in_agreement"] and stats["qdrant"]["products"] == len(ids) - 2, stats


async def test_cancel_stops_between_batches_and_nothing_is_half_written(app_client, catalog, monkeypatch):
    svc, client = app_client
    monkeypatch.setattr(svc.stack.ingest.settings, "batch_size", 4)
    upsert = svc.stack.ingest._upsert  # one batch's write, however the job feeds it (the stream or upsert)
    gate, started = asyncio.Event(), asyncio.Event()

    async def slow(*args, **kwargs):
        started.set()
        await gate.wait()
        return await upsert(*args, **kwargs)

    monkeypatch.setattr(svc.stack.ingest, "_upsert", slow)
    job = await _submit(client, "ingest", path=str(catalog))
    await asyncio.wait_for(started.wait(), 60)  # the job runs its first batch
    cancelling = (await client.delete(f"/v1/jobs/{job['id']}")).json()
    assert cancelling["state"] == "running" and cancelling["cancel_requested"]
    gate.set()
    done = await wait_job(client, job["id"])
    assert done["state"] == "cancelled" and done["progress"]["done"] == 4  # the batch in flight, then stop
    # What the first batch wrote is whole: metadata and vectors for the same four products.
    assert len(await svc.stack.index.product_ids()) == (await svc.stack.mongo.counts())["products"] == 4
    assert "already cancelled" in error_message(await client.delete(f"/v1/jobs/{job['id']}"), 409)


async def test_cancelling_a_reindex_drops_its_collection_and_the_runner_goes_on(app_client, catalog, monkeypatch):
    svc, client = app_client
    await wait_job(client, (await _submit(client, "ingest", path=str(catalog)))["id"])
    before = sorted(await svc.stack.index.product_ids())
    monkeypatch.setattr(svc.stack.ingest.settings, "batch_size", 4)
    batch, started = svc.stack.ingest._reindex_batch, asyncio.Event()

    async def slow(*args, **kwargs):
        started.set()
        await asyncio.sleep(0.2)
        return await batch(*args, **kwargs)

    monkeypatch.setattr(svc.stack.ingest, "_reindex_batch", slow)
    job = await _submit(client, "reindex")
    await asyncio.wait_for(started.wait(), 60)
    await client.delete(f"/v1/jobs/{job['id']}")
    done = await wait_job(client, job["id"])
    assert done["state"] == "cancelled" and "cancelled after" in done["message"], done
    assert done["progress"]["done"] < len(before)  # stopped part-way
    assert sorted(await svc.stack.index.product_ids()) == before and (await client.post(
        "/v1/search/text", json={"text": "red mug"})).json()["hits"]  # fmt: skip
    again = await wait_job(client, (await _submit(client, "embed-all"))["id"])  # the runner is still there
    assert again["state"] == "succeeded" and again["result"]["unchanged"] == len(before)


async def test_a_resumed_delete_counts_a_batch_its_first_run_deleted(app_client, catalog):
    svc, client = app_client
    await wait_job(client, (await _submit(client, "ingest", path=str(catalog)))["id"])
    ids = sorted(await svc.stack.index.product_ids())[:3]
    await svc.runner.aclose()
    job = await svc.stack.jobs.create(JobKind.DELETE, {"ids": ids, "force": False}, "test")
    await svc.stack.ingest.delete(ids[:2])  # what a killed first run deleted before it could report
    await svc.stack.jobs.save_checkpoint(job.id, {"next": 0, "counts": {"deleted": 0, "unknown": 0}, "pending": ids})
    await svc.runner.start()
    svc.runner.wake()
    done = await wait_job(client, job.id)
    assert done["result"] == {"deleted": 3, "unknown": 0} and done["errors"] == [], done


async def test_a_queued_job_is_cancelled_at_once(app_client, catalog, monkeypatch):
    svc, client = app_client
    await svc.runner.aclose()  # nothing picks jobs up
    job = await _submit(client, "ingest", path=str(catalog))
    cancelled = (await client.delete(f"/v1/jobs/{job['id']}")).json()
    assert cancelled["state"] == "cancelled" and cancelled["finished"]


async def test_bad_jobs_are_refused_clearly(app_client, tmp_path, catalog):
    svc, client = app_client
    cases = [
        ({"kind": "transmogrify"}, 422, "kind"),
        ({"kind": "ingest", "params": {}}, 422, "exactly one of path, url or source"),
        ({"kind": "ingest", "params": {"path": "a", "url": "http://b"}}, 422, "exactly one of path, url or source"),
        ({"kind": "sync", "params": {"source": {"type": "sql", "url": "sqlite:///x.db"}}}, 422, "query"),
        ({"kind": "sync", "params": {"source": {"type": "oracle"}}}, 422, "type"),
        ({"kind": "delete", "params": {"ids": []}}, 422, "ids"),
        ({"kind": "embed-all", "params": {"forse": True}}, 422, "forse"),
    ]
    for body, status, fragment in cases:
        assert fragment in error_message(await client.post("/v1/jobs", json=body), status), body
    assert "no job 'nope'" in error_message(await client.get("/v1/jobs/nope"), 404)
    assert "unknown query parameter" in error_message(await client.get("/v1/jobs", params={"sate": "x"}), 422)

    # A missing file, a broken one, an unreachable URL: the job fails with the reason; nothing is written.
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a", ')
    for params, fragment in (
        ({"path": str(tmp_path / "missing.jsonl")}, "no such catalog file"),
        ({"path": str(broken)}, "invalid JSON"),
        ({"url": "http://127.0.0.1:9/catalog.jsonl"}, "download failed"),
        ({"source": "configured"}, "no catalog source is configured"),
    ):
        job = await wait_job(client, (await _submit(client, "ingest", **params))["id"])
        assert job["state"] == "failed" and fragment in job["message"], job
    assert (await svc.stack.mongo.counts())["products"] == 0

    # Scopes: a write key may ingest from a URL or sync the configured source, but not read a file on the
    # server or a database of its choosing, nor re-index.
    _, write_key = await svc.stack.keys.create("writer", Scope.WRITE)
    headers = {"X-API-Key": write_key}
    named = {"type": "sql", "url": "sqlite:////etc/shadow.db", "query": "SELECT 1"}
    for body in (
        {"kind": "ingest", "params": {"path": str(catalog)}},
        {"kind": "reindex"},
        {"kind": "ingest", "params": {"source": named}},
        {"kind": "sync", "params": {"source": named}},
    ):
        assert "needs admin" in error_message(await client.post("/v1/jobs", json=body, headers=headers), 403)
    body = {"kind": "ingest", "params": {"url": "http://127.0.0.1:9/catalog.jsonl"}}
    r = await client.post("/v1/jobs", json=body, headers=headers)
    job = await wait_job(client, r.json()["id"])  # an API caller's URL must be public: no reaching in
    assert job["state"] == "failed" and "fetches public URLs only" in job["message"], job
    job = await wait_job(client, (await client.post("/v1/jobs", json={"kind": "sync"}, headers=headers)).json()["id"])
    assert job["state"] == "failed" and "no catalog source is configured" in job["message"], job
    _, search_key = await svc.stack.keys.create("reader", Scope.SEARCH)
    r = await client.get("/v1/jobs", headers={"X-API-Key": search_key})
    assert r.status_code == 403


async def test_ingest_from_a_catalog_url_resolves_images_against_it(app_client, tmp_path, catalog):
    """A catalog at http://host/c/catalog.jsonl names its images relative to that URL; none can name a file
    on the service's machine."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    svc, client = app_client
    site = tmp_path / "site"
    shutil.copytree(catalog.parent, site)
    rows = [json.loads(line) for line in (site / catalog.name).read_text().splitlines()][:3]
    local_photo = str(catalog.parent / rows[0]["images"][0])  # a real image on this machine, by absolute path
    rows.append({**rows[0], "id": "local-file", "images": [local_photo]})
    (site / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/catalog.jsonl"
        job = await wait_job(client, (await _submit(client, "ingest", url=url))["id"])
    finally:
        server.shutdown()
    assert job["state"] == "succeeded" and job["result"]["added"] == 3, job
    # Joined to the catalog's URL and fetched from the site (where it is not): never read from this machine.
    assert [e["id"] for e in job["errors"]] == ["local-file"] and "404" in job["errors"][0]["message"]
    assert f"http://127.0.0.1:{server.server_port}{local_photo}" in job["errors"][0]["message"]
    stored = await svc.stack.mongo.get_products([rows[0]["id"]])
    assert stored[rows[0]["id"]].images[0].startswith(f"http://127.0.0.1:{server.server_port}/")


@pytest.mark.parametrize("kind", ["ingest"])
def test_jobs_cli_in_the_foreground_without_a_service(kind, model_repository, mongo_uri, tmp_path, catalog):
    """No service: `jobs submit` runs the job here with a progress bar, recorded like any other job."""
    import os
    import subprocess
    import sys

    from tests.service import service_env

    env = {**os.environ, **service_env(model_repository, tmp_path / "qdrant", mongo_uri, "t_jobs_cli")}
    cmd = [sys.executable, "-m", "pipeline", "jobs", "submit", kind, "--path", str(catalog), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["state"] == "succeeded" and job["result"]["added"] == 24 and job["submitted_by"] == "cli"
    listed = subprocess.run([sys.executable, "-m", "pipeline", "jobs", "list", "--json"], capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]

    cli = lambda *args: subprocess.run([sys.executable, "-m", "pipeline", "jobs", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env, timeout=300)  # fmt: skip
    # `jobs watch` on an ended job answers at once with its record; `jobs cancel` on it says why not.
    watched = cli("watch", job["id"], "--json")
    assert watched.returncode == 0 and json.loads(watched.stdout)["state"] == "succeeded", watched.stderr
    refused = cli("cancel", job["id"])
    assert refused.returncode != 0 and "already succeeded" in refused.stderr and "Traceback" not in refused.stderr

    # A job queued for a service that is not running: `jobs cancel` ends it at once, `jobs watch` sees that.
    from pymongo import AsyncMongoClient

    from pipeline.jobs.store import JobStore

    async def queue() -> str:
        async with AsyncMongoClient(mongo_uri, tz_aware=True) as client:
            return (await JobStore(client["t_jobs_cli"]["jobs"]).create(JobKind.EMBED_ALL, {}, "test")).id

    queued = asyncio.run(queue())
    cancelled = cli("cancel", queued, "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "cancelled", cancelled.stderr
    assert json.loads(cli("watch", queued, "--json").stdout)["state"] == "cancelled"
    unknown = cli("cancel", "no-such-job")
    assert unknown.returncode != 0 and "no job 'no-such-job'" in unknown.stderr
