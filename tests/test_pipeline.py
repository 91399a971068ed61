"""The search pipeline end to end on a real mongod and both vector indexes (Qdrant Edge, qdrant-client local)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from pipeline.errors import InvalidInput, ModelMismatch, NotFound, StoreUnavailable
from pipeline.schemas import SearchFilters
from pipeline.stack import open_stack
from pipeline.stores.vectors import ModelStamp, SpaceQuery
from pipeline.types import Modality
from tests.catalogs import draw, write_bad_catalog
from tests.conftest import make_settings
from tests.images import encode

N_PRODUCTS = 24  # tests/catalogs.py: 4 colours x 3 categories x 2 variants
N_IMAGES = 36  # every other product has two images


async def _count_encodes(stack):
    calls = {"images": 0, "texts": 0}
    enc_images, enc_texts = stack.encoder.encode_images, stack.encoder.encode_texts

    async def images(batch):
        calls["images"] += len(batch)
        return await enc_images(batch)

    async def texts(batch, *tower):
        calls["texts"] += len(batch)
        return await enc_texts(batch, *tower)

    stack.encoder.encode_images, stack.encoder.encode_texts = images, texts
    return calls


async def test_ingest_then_rerun_does_no_work(stack, catalog):
    report = await stack.ingest.ingest(catalog)
    assert (report.added, report.updated, report.unchanged, report.rejected) == (N_PRODUCTS, 0, 0, [])
    info = await stack.index.info()
    assert info.points == N_IMAGES and info.stamp.fingerprint == stack.encoder.info.fingerprint
    assert (await stack.mongo.counts())["products"] == N_PRODUCTS

    calls = await _count_encodes(stack)
    again = await stack.ingest.ingest(catalog)
    assert (again.added, again.updated, again.unchanged) == (0, 0, N_PRODUCTS)
    assert calls == {"images": 0, "texts": 0}


async def test_changed_row_is_reembedded_and_lost_images_removed(stack, catalog, tmp_path):
    await stack.ingest.ingest(catalog)
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    two = next(r for r in rows if len(r["images"]) == 2)
    two["images"] = two["images"][:1]
    two["name"] = "renamed " + two["name"]
    changed = tmp_path / "catalog.jsonl"
    changed.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for r in rows:  # same images, but now relative to another folder: make them absolute
        r["images"] = [str(catalog.parent / i) for i in r["images"]]
    changed.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    calls = await _count_encodes(stack)
    report = await stack.ingest.ingest(changed)
    assert (report.added, report.updated, report.unchanged) == (0, 1, N_PRODUCTS - 1)
    assert calls == {"images": 1, "texts": 1}
    assert (await stack.index.info()).points == N_IMAGES - 1
    assert (await stack.mongo.get_products([two["id"]]))[two["id"]].name.startswith("renamed")


async def test_bad_rows_rejected_with_line_numbers_others_go_in(stack, tmp_path):
    path, expected = write_bad_catalog(tmp_path)
    report = await stack.ingest.ingest(path)
    assert report.added == 4
    got = dict(report.rejected)
    assert sorted(got) == sorted(expected)
    for line, fragment in expected.items():
        assert fragment in got[line], (line, got[line])
    assert (await stack.mongo.counts())["products"] == 4  # nothing half-written
    assert await stack.index.product_ids() == {json.loads(x)["id"] for x in path.read_text().splitlines()[:4]}


async def test_resume_after_crash_no_duplicates_nothing_missing(
    model_repository, backend, tmp_path, mongo_uri, catalog
):
    settings = make_settings(model_repository, backend, tmp_path, mongo_uri, ingest={"batch_size": 5})
    async with open_stack(settings) as stack:
        upsert, calls = stack.index.upsert, {"n": 0}

        async def crash_on_third_batch(points):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash")
            await upsert(points)

        stack.index.upsert = crash_on_third_batch
        with pytest.raises(RuntimeError, match="simulated crash"):
            await stack.ingest.ingest(catalog)
        stack.index.upsert = upsert
        counts = await stack.mongo.counts()
        assert counts["not_indexed"] == 5  # the batch written to MongoDB but not to Qdrant
        report = await stack.ingest.ingest(catalog)
        assert report.added + report.updated == N_PRODUCTS - 10 and report.unchanged == 10
        info = await stack.index.info()
        assert info.points == N_IMAGES
        assert (await stack.mongo.counts())["not_indexed"] == 0
        assert (await stack.status())["in_agreement"] is True


async def test_search_kinds_group_per_product(stack, catalog):
    await stack.ingest.ingest(catalog)
    # The exact text a product's text vector was made from finds that product at cosine 1 (random weights
    # have no semantics, so nothing else about the ranking can be asserted here).
    exact = (await stack.mongo.get_products(["mug-red-0"]))["mug-red-0"].embedding_text()
    text = await stack.search.search_text(exact, top_k=8)
    ids = [h.product_id for h in text.hits]
    assert len(ids) == len(set(ids)) == 8
    hit = next(h for h in text.hits if h.product_id == "mug-red-0")
    assert hit.similarity > 0.999 and hit.matched is Modality.TEXT and hit.product.name == "red mug 0"
    assert text.cache_hit is False
    assert (await stack.search.search_text("  " + exact.upper() + " ", top_k=8)).cache_hit is True
    assert set(text.timings_ms) >= {"embed", "search", "metadata", "total"}

    own_photo = (catalog.parent / "img" / "shirt-blue-0-0.jpg").read_bytes()
    image = await stack.search.search_image(own_photo, top_k=5)
    assert len(image.hits) == 5
    hit = image.hits[0]  # the shopper's photo of a catalog item finds that item first
    assert hit.product_id == "shirt-blue-0" and hit.similarity > 0.999
    assert hit.matched is Modality.IMAGE and hit.image_index == 0
    other = await stack.search.search_image(encode(draw("blue", "shirt", seed=999), "JPEG"), top_k=5)
    assert len({h.product_id for h in other.hits}) == 5

    similar = await stack.search.search_product("poster-green-1", top_k=N_PRODUCTS)
    similar_ids = [h.product_id for h in similar.hits]
    assert "poster-green-1" not in similar_ids and len(similar_ids) == N_PRODUCTS - 1
    assert similar.cache_hit is None
    scores = [h.score for h in similar.hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("slack", [16, 0])
async def test_a_product_left_out_after_the_search_gives_the_filtered_answer(stack, catalog, monkeypatch, slack):
    """ "More like this" drops the product itself from a few extra points instead of a must-not filter (which
    the engine plans as a scan); with too little slack it falls back to the filter. Same answer either way."""
    import pipeline.search as search_module

    await stack.ingest.ingest(catalog)
    monkeypatch.setattr(search_module, "EXCLUDE_SLACK", slack)
    calls: list[tuple[int, tuple[str, ...]]] = []
    search = stack.index.search

    async def counted(spaces, filters, limit, min_similarity=None, exclude=()):
        calls.append((limit, tuple(exclude)))
        return await search(spaces, filters, limit, min_similarity, exclude)

    monkeypatch.setattr(stack.index, "search", counted)
    for product_id in ("mug-red-0", "poster-green-1", "shirt-blue-0"):
        stored = await stack.index.product_vectors(product_id)
        spaces = [
            SpaceQuery(stored[Modality.IMAGE][0], Modality.IMAGE),
            SpaceQuery(stored[Modality.TEXT][0], Modality.TEXT),
        ]
        for limit in (3, 8, 40):
            calls.clear()
            got = await stack.search._search(spaces, SearchFilters(), limit, None, [product_id])
            expected = await search(spaces, SearchFilters(), limit, None, [product_id])
            assert [[h.product_id for h in hits] for hits in got] == [[h.product_id for h in hits] for hits in expected]
            assert all(product_id not in {h.product_id for h in hits} for hits in got)
            # First unfiltered with the slack; the filter only when the product's own points ate into it
            assert calls[0] == (limit + slack, ())
            assert len(calls) == 1 or (slack == 0 and calls[1] == (limit, (product_id,)))
            if slack == 0 and limit < 24:  # the product is its own best match and the list was full: filtered
                assert len(calls) == 2


@pytest.mark.parametrize("fusion", ["weighted", "dbsf", "rrf"])
async def test_hits_follow_the_score_they_show(model_repository, backend, tmp_path, mongo_uri, catalog, fusion):
    # Whatever the fusion, the order of the hits is the order of the score each hit reports (random weights:
    # relevance is measured on the demo model by `python -m bench demo-queries`, not here).
    settings = make_settings(model_repository, backend, tmp_path, mongo_uri, search={"fusion": fusion})
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
        photo = encode(draw("red", "mug", seed=7), "JPEG")
        answers = [
            *[await stack.search.search_text(q, top_k=N_PRODUCTS) for q in ("red mug", "a thing", "blue shirt 1")],
            await stack.search.search_image(photo, top_k=N_PRODUCTS),
            await stack.search.search_product("mug-red-0", top_k=N_PRODUCTS),
        ]
        for response in answers:
            scores = [h.score for h in response.hits]
            assert len(scores) >= N_PRODUCTS - 1 and scores == sorted(scores, reverse=True)
            assert all(np.isfinite(scores))
        if fusion == "weighted":  # a cosine-scale score; one space searched: the score is the cosine itself
            assert all(-1.0 <= s <= 1.0 for r in answers for s in (h.score for h in r.hits))
            assert all(h.score == pytest.approx(h.similarity) for h in answers[3].hits)


async def test_filters(stack, catalog):
    await stack.ingest.ingest(catalog)
    hits = (await stack.search.search_text("a thing", top_k=50, filters=SearchFilters(category="mug"))).hits
    assert len(hits) == 8 and {h.product.category for h in hits} == {"mug"}
    f = SearchFilters(color="red", brand="acme")
    hits = (await stack.search.search_text("a thing", top_k=50, filters=f)).hits
    assert hits and all(h.product.color == "red" and h.product.brand == "acme" for h in hits)
    f = SearchFilters(min_price=10, max_price=14)
    hits = (await stack.search.search_text("a thing", top_k=50, filters=f)).hits
    assert sorted(h.product.price for h in hits) == [10.0, 11.0, 12.0, 13.0, 14.0]
    hits = (await stack.search.search_text("a thing", top_k=50, min_score=0.999)).hits
    assert all(h.similarity >= 0.999 for h in hits)


async def test_topk_equals_numpy_brute_force(stack, catalog):
    await stack.ingest.ingest(catalog)
    ids, vectors = [], []
    for pid in await stack.index.product_ids():
        for i, vec in enumerate((await stack.index.product_vectors(pid))[Modality.IMAGE]):
            ids.append((pid, i))
            vectors.append(vec)
    matrix = np.stack(vectors)
    query = (await stack.encoder.encode_texts(["green poster"]))[0]
    expected = np.argsort(-(matrix @ query))[:10]
    [got] = await stack.index.search([SpaceQuery(query, Modality.IMAGE)], SearchFilters(), 10)
    assert [(h.product_id, h.image_index) for h in got] == [ids[i] for i in expected]
    np.testing.assert_allclose([h.similarity for h in got], (matrix @ query)[expected], atol=1e-5)


async def test_delete(stack, catalog):
    await stack.ingest.ingest(catalog)
    deleted, unknown = await stack.ingest.delete(["mug-red-0", "shirt-blue-1", "no-such-id"])
    assert deleted == ["mug-red-0", "shirt-blue-1"] and unknown == ["no-such-id"]
    hits = (await stack.search.search_text("red mug 0", top_k=50)).hits
    assert {"mug-red-0", "shirt-blue-1"}.isdisjoint(h.product_id for h in hits)
    assert (await stack.mongo.counts())["products"] == N_PRODUCTS - 2
    with pytest.raises(NotFound):
        await stack.search.search_product("mug-red-0")
    assert (await stack.status())["in_agreement"] is True


async def test_reindex_with_queries_running_during_the_swap(stack, catalog):
    await stack.ingest.ingest(catalog)
    before = [h.product_id for h in (await stack.search.search_text("yellow shirt", top_k=5)).hits]
    stop, answers, errors = asyncio.Event(), [], []

    async def query_loop():
        while not stop.is_set():
            try:
                answers.append([h.product_id for h in (await stack.search.search_text("yellow shirt", top_k=5)).hits])
            except Exception as exc:  # any failure during the swap is what this test looks for
                errors.append(exc)
            await asyncio.sleep(0)

    loops = [asyncio.create_task(query_loop()) for _ in range(4)]
    old_collection = (await stack.index.info()).collection
    report = await stack.ingest.reindex()
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*loops)
    assert errors == [] and len(answers) > 4 and all(a == before for a in answers)
    assert report.updated == N_PRODUCTS and report.rejected == []
    info = await stack.index.info()
    assert info.points == N_IMAGES
    if stack.index.backend != "qdrant-edge":
        assert info.collection != old_collection  # the alias moved to a new collection


async def test_fingerprint_refusal_then_reindex_fixes_it(
    model_repository, other_repository, tmp_path, mongo_uri, catalog
):
    """Vectors of model A opened with model B: searches and ingests are refused until `reindex`."""
    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri)
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
    settings.encoder.model_repository = other_repository
    async with open_stack(settings) as stack:
        with pytest.raises(ModelMismatch, match="run `python -m pipeline reindex`"):
            await stack.search.search_text("red mug")
        with pytest.raises(ModelMismatch):
            await stack.ingest.ingest(catalog)
        assert (await stack.status())["qdrant"]["model_matches"] is False
        report = await stack.ingest.reindex()
        assert report.copied == 0  # another model: every product embedded again
        assert report.updated == N_PRODUCTS
        assert len((await stack.search.search_text("red mug")).hits) == 10
        assert (await stack.status())["qdrant"]["model_matches"] is True
        again = await stack.ingest.ingest(catalog)
        assert again.unchanged == N_PRODUCTS  # reindex recorded the new model for every product


async def test_server_collection_refuses_another_model():
    from pipeline.stores.qdrant_server import ServerIndex
    from pipeline.stores.vectors import VectorPoint

    index = ServerIndex(":memory:", "products")
    a, b = ModelStamp("a" * 64, 4, "model-a"), ModelStamp("b" * 64, 4, "model-b")
    await index.open(a)
    vec = np.array([1, 0, 0, 0], np.float32)
    await index.upsert([VectorPoint("p", 0, vec, vec, {"product_id": "p", "image_index": 0})])
    await index.open(b)  # the collection exists, filled by model a
    with pytest.raises(ModelMismatch, match="model-a"):
        await index.search([SpaceQuery(vec, Modality.IMAGE)], SearchFilters(), 1)
    with pytest.raises(ModelMismatch):
        await index.upsert([VectorPoint("q", 0, vec, vec, {"product_id": "q", "image_index": 0})])
    await index.aclose()


async def test_injection_strings_are_data(stack, catalog):
    await stack.ingest.ingest(catalog)
    for evil in ['{"$gt": ""}', "$where", "'; return true; //", "mug-red-0' || '1'=='1"]:
        with pytest.raises(NotFound):
            await stack.search.search_product(evil)
        assert await stack.mongo.get_products([evil]) == {}
        for field in ("category", "brand", "color"):
            hits = (await stack.search.search_text("mug", filters=SearchFilters(**{field: evil}))).hits
            assert hits == []
    deleted, _ = await stack.ingest.delete(['{"$gt": ""}'])
    assert deleted == [] and (await stack.mongo.counts())["products"] == N_PRODUCTS


async def test_bad_queries(stack, catalog):
    await stack.ingest.ingest(catalog)
    with pytest.raises(InvalidInput, match="empty text"):
        await stack.search.search_text("   ")
    assert (await stack.search.search_text("red " * 250)).hits  # 1,000 characters: truncated to 77 tokens, answered
    with pytest.raises(InvalidInput, match="10000 characters is over the limit of 1000"):
        await stack.search.search_text("red " * 2500)  # a query that long is a mistake or an attack
    with pytest.raises(InvalidInput, match="not an image"):
        await stack.search.search_image(b"GIF89a nope")
    with pytest.raises(InvalidInput, match="top_k"):
        await stack.search.search_text("red", top_k=0)


async def test_events_are_logged(stack, catalog):
    await stack.ingest.ingest(catalog)
    await stack.search.search_text("red mug")
    await stack.search.search_text("red mug")
    with pytest.raises(InvalidInput):
        await stack.search.search_text("")
    await stack.events.aclose()
    events = await stack.mongo.events.find({}, {"_id": 0}).sort("ts", 1).to_list(None)
    assert [e["kind"] for e in events] == ["text", "text", "text"]
    assert [e["cache_hit"] for e in events[:2]] == [False, True]
    assert events[0]["top_ids"] and events[0]["error"] is None and events[0]["timings_ms"]["total"] > 0
    assert "empty text" in events[2]["error"]


async def test_mongo_down_search_degrades(model_repository, backend, tmp_path, mongo_uri, catalog):
    from pipeline.stores.mongod import ManagedMongod

    own = ManagedMongod(tmp_path / "own-mongod")
    uri = own.start_sync()
    settings = make_settings(model_repository, backend, tmp_path, uri)
    try:
        async with open_stack(settings) as stack:
            await stack.ingest.ingest(catalog)
            own.stop_sync()  # MongoDB dies under a running stack
            response = await stack.search.search_text("red mug", top_k=5)
            assert response.metadata_missing is True and len(response.hits) == 5
            assert all(h.product is None and np.isfinite(h.score) for h in response.hits)
            with pytest.raises(StoreUnavailable):
                await stack.ingest.ingest(catalog)
            status = await stack.status()
            assert status["mongo"]["healthy"] is False and status["qdrant"]["healthy"] is True
    finally:
        own.stop_sync()


async def test_qdrant_server_down_is_a_clear_error(model_repository, tmp_path, mongo_uri):
    from pipeline.stores.mongod import free_port

    settings = make_settings(
        model_repository,
        "local",
        tmp_path,
        mongo_uri,
        qdrant={"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1},
    )
    with pytest.raises(StoreUnavailable, match=r"Qdrant at http://127\.0\.0\.1"):
        async with open_stack(settings):
            pass


async def test_edge_store_has_one_owner(model_repository, tmp_path, mongo_uri):
    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri)
    async with open_stack(settings):
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            async with open_stack(settings):
                pass


async def test_url_that_hangs_is_cut_off(model_repository, tmp_path, mongo_uri):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ok.jpg":
                body = encode(draw("red", "mug", 1), "JPEG")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                release.wait(10)  # hang

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    path = tmp_path / "urls.jsonl"
    path.write_text(
        json.dumps({"id": "u1", "name": "remote mug", "images": [f"{base}/ok.jpg"]})
        + "\n"
        + json.dumps({"id": "u2", "name": "hanging mug", "images": [f"{base}/hang.jpg"]})
        + "\n"
    )
    settings = make_settings(model_repository, "local", tmp_path, mongo_uri, ingest={"http_timeout_s": 1})
    try:
        async with open_stack(settings) as stack:
            report = await stack.ingest.ingest(path)
        assert report.added == 1 and len(report.rejected) == 1
        line, reason = report.rejected[0]
        assert line == 2 and "no answer within" in reason
    finally:
        release.set()
        server.shutdown()


async def test_a_caller_going_away_does_not_fail_others_waiting_on_the_same_query(stack, catalog):
    await stack.ingest.ingest(catalog)
    first = asyncio.ensure_future(stack.search.search_text("green poster, shared"))
    await asyncio.sleep(0)  # the first caller has started the encoding
    second = asyncio.ensure_future(stack.search.search_text("green poster, shared"))
    await asyncio.sleep(0)
    first.cancel()  # a client that disconnects
    answer = await second
    assert answer.hits and answer.cache_hit is True  # shared the in-flight encoding
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await stack.search.search_text("green poster, shared")).cache_hit is True  # the encoding finished


async def test_when_every_caller_goes_away_the_shared_encoding_stops(stack, monkeypatch):
    """A query whose callers all left (disconnects, deadlines) does not keep the encoder busy."""
    started, stopped = asyncio.Event(), asyncio.Event()

    async def stuck(texts, *tower):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise

    monkeypatch.setattr(stack.search.encoder, "encode_texts", stuck)
    callers = [asyncio.ensure_future(stack.search.search_text("abandoned query")) for _ in range(2)]
    await asyncio.wait_for(started.wait(), 10)  # a failure to start fails the test, never hangs it
    callers[0].cancel()
    await asyncio.sleep(0.05)
    assert not stopped.is_set()  # one caller still waits: the encoding goes on
    callers[1].cancel()
    await asyncio.wait_for(stopped.wait(), 5)
    assert not stack.search._inflight  # and a later caller starts afresh


async def test_result_metadata_is_cached_and_a_write_is_seen_at_once(stack, catalog, tmp_path):
    await stack.ingest.ingest(catalog)
    first = await stack.search.search_product("mug-red-0", top_k=3)
    top = first.hits[0].product
    assert top is not None
    repriced = top.model_copy(update={"price": (top.price or 0) + 100})  # same vectors, new metadata
    assert (await stack.ingest.upsert([repriced]))[0].status == "updated"
    again = await stack.search.search_product("mug-red-0", top_k=3)
    assert again.hits[0].product_id == top.id and again.hits[0].product.price == repriced.price
    await stack.ingest.delete([top.id])
    assert top.id not in {h.product_id for h in (await stack.search.search_product("mug-red-0", top_k=3)).hits}
