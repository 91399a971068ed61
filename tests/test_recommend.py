"""Recommendations through the API (the app in-process with its real stack: Qdrant Edge, the test mongod):
events in, buyer vectors checked against a numpy reference computed from the stored product vectors, the
ranking against a brute-force one, exclusions, diversity, the popular fallback, and the bad inputs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest

from pipeline.recommend.buyer import encode_buyer, mmr
from pipeline.recommend.events import EventType, Interaction
from pipeline.types import Modality
from tests.conftest import asgi_service, make_settings, wait_job
from tests.service import error_message

BUYER = "shopper$1.example"  # `$` and `.` are just characters in a buyer id
NOW = dt.datetime.now(dt.UTC)


async def _ingested(app_client, catalog):
    svc, client = app_client
    r = await client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(catalog)}})
    job = await wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    return svc, client


def _event(product_id: str, kind: str, days_ago: float = 0.0, **extra) -> dict:
    ts = (NOW - dt.timedelta(days=days_ago)).isoformat()
    return {"buyer_id": BUYER, "product_id": product_id, "type": kind, "ts": ts, **extra}


async def test_buyer_vector_and_ranking_match_a_numpy_reference(app_client, catalog):
    svc, client = await _ingested(app_client, catalog)
    history = [_event("mug-red-0", "purchase", 1), _event("mug-red-1", "add_to_cart", 3),
               _event("shirt-blue-0", "view", 20), _event("poster-green-1", "view", 40)]  # fmt: skip
    r = await client.post("/v1/events", json={"events": history})
    assert r.json() == {"accepted": 4, "duplicates": 0, "unknown_products": 0, "unknown_queries": 0, "rejected": []}, (
        r.text
    )

    # The buyer vector: Σ weight(type) · 0.5^(age / half-life) · product vector, per space, normalised.
    stored = await svc.stack.index.vectors_of([e["product_id"] for e in history])
    weights, half_life = {"view": 1, "click": 1, "add_to_cart": 5, "purchase": 10}, 14.0
    want = {}
    for m in Modality:
        acc = 0
        for e in history:
            vecs = np.asarray(stored[e["product_id"]][m], np.float32)
            point = vecs.mean(0) / np.linalg.norm(vecs.mean(0))
            age = (NOW - dt.datetime.fromisoformat(e["ts"])).total_seconds() / 86400
            acc = acc + weights[e["type"]] * 0.5 ** (age / half_life) * point
        want[m] = acc / np.linalg.norm(acc)
    got = (await client.post("/v1/buyers/encode", json={"buyer_id": BUYER})).json()
    assert got["events_used"] == 4
    for m in Modality:
        assert np.allclose(got["vectors"][m.value], want[m], atol=1e-4)

    # The ranking: every product scored by the mean of its best image cosine and its text cosine (the
    # weighted fusion), purchased products left out. top_k 10 fetches every point of this small catalog
    # (10 x overfetch 4 > 36 points), so no score is the fusion's bound for an unseen one.
    all_ids = sorted(await svc.stack.index.product_ids())
    every = await svc.stack.index.vectors_of(all_ids)
    scores = {
        pid: 0.5 * max(float(v @ want[Modality.IMAGE]) for v in every[pid][Modality.IMAGE])
        + 0.5 * float(every[pid][Modality.TEXT][0] @ want[Modality.TEXT])
        for pid in all_ids
        if pid != "mug-red-0"
    }
    expected = sorted(scores, key=lambda p: -scores[p])[:10]
    rec = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"top_k": 10})).json()
    assert rec["strategy"] == "buyer" and [h["id"] for h in rec["hits"]] == expected, rec
    assert all(h["reason"].startswith("similar to ") and h["because"] in {e["product_id"] for e in history}
               for h in rec["hits"])  # fmt: skip
    assert all(abs(h["score"] - scores[h["id"]]) < 1e-4 for h in rec["hits"])
    verbs = {"purchase": "purchased", "add_to_cart": "added to your cart", "view": "viewed"}
    names = {pid: p.name for pid, p in (await svc.stack.mongo.get_products([e["product_id"] for e in history])).items()}
    kinds = {e["product_id"]: e["type"] for e in history}
    assert all(h["reason"] == f"similar to {names[h['because']]} you {verbs[kinds[h['because']]]}" for h in rec["hits"])

    # Exclusions: seen leaves out all four, none may bring the purchase back.
    seen = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"exclude": "seen", "top_k": 20})).json()
    assert not {h["id"] for h in seen["hits"]} & {e["product_id"] for e in history}
    none = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"exclude": "none", "top_k": 24})).json()
    assert "mug-red-0" in {h["id"] for h in none["hits"]}
    # Filters work as in search (a category level, a price cap).
    mugs = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"category": "mug"})).json()
    assert mugs["hits"] and all(h["product"]["category"] == "mug" for h in mugs["hits"])
    products = await svc.stack.mongo.get_products(all_ids)
    cap = sorted(p.price for p in products.values() if p.price is not None)[len(products) // 2]
    cheap = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"max_price": cap, "top_k": 24})).json()
    assert cheap["hits"] and all(h["product"]["price"] <= cap for h in cheap["hits"])
    assert len(cheap["hits"]) < len(none["hits"])  # the cap left some out

    # The same interactions as an anonymous session: the same list, nothing stored.
    session = [{"product_id": e["product_id"], "type": e["type"], "ts": e["ts"]} for e in history]
    anon = (await client.post("/v1/recommend", json={"interactions": session, "top_k": 10})).json()
    assert [h["id"] for h in anon["hits"]] == expected and anon["buyer_id"] is None


async def test_new_events_refresh_the_buyer_and_deleted_products_drop_out(app_client, catalog):
    svc, client = await _ingested(app_client, catalog)
    await client.post("/v1/events", json={"events": [_event("poster-blue-0", "view")]})
    first = (await client.post("/v1/buyers/encode", json={"buyer_id": BUYER})).json()
    await client.post("/v1/events", json={"events": [_event("mug-yellow-1", "purchase")]})
    second = (await client.post("/v1/buyers/encode", json={"buyer_id": BUYER})).json()
    assert second["events_used"] == 2 and second["vectors"] != first["vectors"]  # not served from the cache
    assert (await client.delete("/v1/products/mug-yellow-1")).status_code == 200
    svc.stack.recommend._buyers.clear()  # another replica's cache expires after buyer_cache_s
    third = (await client.post("/v1/buyers/encode", json={"buyer_id": BUYER})).json()
    assert third["events_used"] == 1 and np.allclose(third["vectors"]["image"], first["vectors"]["image"], atol=1e-5)
    rec = (await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"top_k": 24})).json()
    assert "mug-yellow-1" not in {h["id"] for h in rec["hits"]}


async def test_popular_fallback_for_a_buyer_with_no_history(app_client, catalog):
    _, client = await _ingested(app_client, catalog)
    events = [{"buyer_id": f"b{i}", "product_id": "shirt-red-1", "type": "view"} for i in range(3)]
    events += [{"buyer_id": "b9", "product_id": "mug-green-0", "type": "purchase"}]  # 10 > 3 views
    events += [{"buyer_id": "b8", "product_id": "poster-red-0", "type": "add_to_cart", "ts": "2020-01-01T00:00:00Z"}]
    await client.post("/v1/events", json={"events": events})
    for answer in (
        (await client.get("/v1/buyers/nobody/recommendations")).json(),
        (await client.post("/v1/recommend", json={"interactions": []})).json(),
    ):
        assert answer["strategy"] == "popular" and answer["events_used"] == 0
        assert [h["id"] for h in answer["hits"]] == ["mug-green-0", "shirt-red-1"]  # the 2020 cart is too old
        assert answer["hits"][0]["reason"] == "popular in the last 30 days" and answer["hits"][0]["score"] == 10
    shirts = (await client.get("/v1/buyers/nobody/recommendations", params={"category": "shirt"})).json()
    assert [h["id"] for h in shirts["hits"]] == ["shirt-red-1"]


async def test_diversify_is_mmr_over_the_same_candidates(model_repository, mongo_uri, tmp_path, catalog):
    # a strong pull to diversity (lambda 0.3, default 0.7), so the list it gives differs from the plain top 6
    # whatever the last float digits of the candidates' scores (their batch-mates at embedding time vary)
    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, recommend={"mmr_lambda": 0.3})
    async with asgi_service(settings) as opened:
        await _check_diversify(await _ingested(opened, catalog))


async def _check_diversify(opened: Any) -> None:
    svc, client = opened
    await client.post("/v1/events", json={"events": [_event("mug-red-0", "purchase")]})
    url = f"/v1/buyers/{BUYER}/recommendations"
    every = (await client.get(url, params={"top_k": 24})).json()["hits"]  # all candidates, exactly scored
    mixed = (await client.get(url, params={"top_k": 6, "diversify": "true"})).json()["hits"]
    # The reference: MMR (lambda from the settings) over the 24 candidates with their fused scores, similarity
    # the mean cosine over both spaces of each product's vectors.
    stored = await svc.stack.index.vectors_of([h["id"] for h in every])
    joint = {}
    for pid, spaces in stored.items():
        image = np.mean(spaces[Modality.IMAGE], 0)
        parts = [image / np.linalg.norm(image), spaces[Modality.TEXT][0]]
        joint[pid] = np.concatenate(parts) / np.sqrt(2)
    order, relevance = [h["id"] for h in every], {h["id"]: h["score"] for h in every}
    want = mmr(order, relevance, joint, 6, svc.settings.recommend.mmr_lambda)
    assert [h["id"] for h in mixed] == want
    assert want != order[:6]  # diversity changed the list here, so the test shows it is applied


async def test_bad_events_and_requests(app_client, catalog, mongo_uri):
    svc, client = await _ingested(app_client, catalog)
    r = await client.post("/v1/events", json={"events": [_event("mug-red-0", "wishlist")]})
    assert "type" in error_message(r, 422)
    assert "events" in error_message(await client.post("/v1/events", json={"events": []}), 422)
    future = (NOW + dt.timedelta(days=2)).isoformat()
    batch = [_event("mug-red-0", "view", event_id="e1"), _event("no-such-product", "view"),
             {**_event("mug-red-1", "view"), "ts": future}]  # fmt: skip
    r = (await client.post("/v1/events", json={"events": batch})).json()
    assert (r["accepted"], r["unknown_products"], [e["index"] for e in r["rejected"]]) == (1, 1, [2]), r
    again = (await client.post("/v1/events", json={"events": batch[:1]})).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)  # the same event id: stored once
    assert "unknown query parameter" in error_message(
        await client.get(f"/v1/buyers/{BUYER}/recommendations", params={"colour": "red"}), 422
    )
    assert "top_k" in error_message(await client.get(f"/v1/buyers/{BUYER}/recommendations?top_k=0"), 422)
    assert "exactly one" in error_message(await client.post("/v1/buyers/encode", json={}), 422)
    unknown = (await client.post("/v1/recommend", json={"interactions": [{"product_id": "ghost"}]})).json()
    assert unknown["strategy"] == "popular"  # nothing usable in the session

    # A buyer with 100,000 events costs what one with max_events does: only the most recent count. The newest
    # max_events name one product and every older one another (purchased), so the vector shows which were read.
    cap = svc.settings.recommend.max_events
    docs = [{"buyer_id": "heavy", "product_id": "shirt-green-0" if i < cap else "mug-red-0",
             "type": "view" if i < cap else "purchase", "ts": NOW - dt.timedelta(minutes=i), "received": NOW}
            for i in range(100_000)]  # fmt: skip
    from pymongo import AsyncMongoClient

    async with AsyncMongoClient(mongo_uri) as mongo:  # without the service's 1.5 s per-operation budget
        await mongo[svc.settings.mongo.database]["shopper_events"].insert_many(docs)
    got = (await client.post("/v1/buyers/encode", json={"buyer_id": "heavy"})).json()
    assert got["events_used"] == cap
    stored = (await svc.stack.index.vectors_of(["shirt-green-0"]))["shirt-green-0"][Modality.IMAGE]
    shirt = np.mean(stored, 0) / np.linalg.norm(np.mean(stored, 0))
    assert np.allclose(got["vectors"]["image"], shirt, atol=1e-5)  # the newest events only
    # ...but a purchase older than those is still a purchase: exclude=purchased leaves it out.
    url = "/v1/buyers/heavy/recommendations"
    assert "mug-red-0" not in {h["id"] for h in (await client.get(url, params={"top_k": 24})).json()["hits"]}
    every = (await client.get(url, params={"top_k": 24, "exclude": "none"})).json()["hits"]
    assert "mug-red-0" in {h["id"] for h in every}

    # An event older than the retention window would be deleted by MongoDB at once: refused, saying why.
    old = {**_event("mug-red-1", "view"), "ts": (NOW - dt.timedelta(days=400)).isoformat()}
    r = (await client.post("/v1/events", json={"events": [old, _event("mug-red-1", "view")]})).json()
    assert r["accepted"] == 1 and [e["index"] for e in r["rejected"]] == [0], r
    assert "retention" in r["rejected"][0]["message"]


def test_mmr_at_one_is_the_relevance_order_and_at_zero_avoids_repeats():
    vecs = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([0.0, 1.0])}
    rel = {"a": 0.9, "b": 0.8, "c": 0.1}
    assert mmr(["a", "b", "c"], rel, vecs, 3, 1.0) == ["a", "b", "c"]
    assert mmr(["a", "b", "c"], rel, vecs, 2, 0.3) == ["a", "c"]


@pytest.mark.parametrize("half_life", [0.0, 7.0])
def test_encode_buyer_weights_and_skips(half_life):
    stored = {"x": {Modality.IMAGE: [np.array([1.0, 0.0])], Modality.TEXT: [np.array([1.0, 0.0])]},
              "y": {Modality.IMAGE: [np.array([0.0, 1.0])], Modality.TEXT: [np.array([0.0, 1.0])]}}  # fmt: skip
    history = [Interaction(product_id="x", type=EventType.PURCHASE, ts=NOW),
               Interaction(product_id="y", type=EventType.VIEW, ts=NOW - dt.timedelta(days=7)),
               Interaction(product_id="gone", type=EventType.PURCHASE, ts=NOW)]  # fmt: skip
    buyer = encode_buyer(history, stored, {"view": 1, "purchase": 10}, half_life, NOW)
    assert buyer is not None and buyer.events_used == 2 and buyer.strongest == {"x": "purchase", "y": "view"}
    y_weight = 0.5 if half_life else 1.0
    want = np.array([10.0, y_weight]) / np.linalg.norm([10.0, y_weight])
    assert np.allclose(buyer.spaces[Modality.IMAGE], want)
    assert encode_buyer(history[2:], stored, {"purchase": 10}, half_life, NOW) is None


def test_events_import_cli_reads_an_export_as_the_recommender_wrote_it(model_repository, mongo_uri, tmp_path, catalog):
    """``python -m pipeline events import events.csv`` with no service: the column and event names of an
    analytics export, epoch-millisecond and ISO stamps, bad rows listed by line, unknown products counted."""
    import json
    import os
    import subprocess
    import sys

    from tests.service import service_env

    env = {**os.environ, **service_env(model_repository, tmp_path / "qdrant", mongo_uri, "t_events_cli")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env, timeout=300)  # fmt: skip
    assert run("ingest", str(catalog)).returncode == 0
    export = tmp_path / "events.csv"
    day = lambda n: (NOW - dt.timedelta(days=n)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731
    export.write_text(
        "distinct_id,item_id,event_name,timestamp\n"
        f"u1,mug-red-0,Product Viewed,{int((NOW - dt.timedelta(days=15)).timestamp() * 1000)}\n"
        f"u1,mug-red-0,Order Completed,{day(14)}Z\n"
        f"u1,mug-red-1,addtocart,{day(13)}+00:00\n"
        f"u2,nope,view,{day(13)}Z\n"
        f"u2,mug-red-1,wishlist,{day(13)}Z\n"
        "u2,mug-red-1,view,yesterday\n"
        f"u2,mug-red-1,view,{day(400)}Z\n"  # past the 365-day retention: MongoDB would drop it at once
    )
    proc = run("events", "import", str(export), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["accepted"], got["unknown_products"]) == (3, 1), got
    assert [r["line"] for r in got["rejected"]] == [6, 7, 8] and "wishlist" in got["rejected"][0]["reason"], got
    assert "retention" in got["rejected"][2]["reason"]
    again = json.loads(run("events", "import", str(export), "--json").stdout)
    assert (again["accepted"], again["duplicates"]) == (0, 3)  # ids from the rows' content: nothing twice


async def test_a_long_session_keeps_its_most_recent_events_whatever_its_order(app_client, catalog):
    svc, client = await _ingested(app_client, catalog)
    cap = svc.settings.recommend.max_events
    ago = [dt.timedelta(days=300 - i / 1000) for i in range(cap)]  # oldest first
    old = [{"product_id": "poster-green-0", "type": "purchase", "ts": (NOW - a).isoformat()} for a in ago]
    recent = {"product_id": "mug-blue-1", "type": "view", "ts": NOW.isoformat()}
    got = (await client.post("/v1/buyers/encode", json={"interactions": [*old, recent]})).json()
    old_only = (await client.post("/v1/buyers/encode", json={"interactions": old})).json()
    assert got["events_used"] == cap  # the oldest purchase fell off, the newest view stayed
    assert not np.allclose(got["vectors"]["image"], old_only["vectors"]["image"], atol=1e-2)  # the view counts
