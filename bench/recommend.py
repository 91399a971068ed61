"""Recommendation latency: buyer encoding + retrieval at 10,000 products and 50-event histories.

One run, the same histories everywhere (50 events each over 50 distinct products drawn uniformly from the
catalog: 70% views, 20% add-to-carts, 10% purchases, stamped over the last 60 days; top 10, purchased products
excluded, no filters, no diversity):

- numpy baseline, in-process: the same weighted, decayed mean in both spaces over an in-memory matrix, a
  brute-force cosine over every product in both spaces, the weighted fusion (mean of the two cosines), the
  purchased products left out, the top 10 by argpartition, metadata and the reason (the history product each
  hit is closest to) from dicts. The same work without a vector engine, a database or HTTP.
- the service's own call in-process (``RecommendService.for_session`` on the opened stack: Qdrant Edge, the
  managed mongod), with the product-vector cache warm (every product of the histories seen once: the steady
  state of a catalog that fits it) and off (every product's vectors read from the index each time);
- over HTTP (``python -m pipeline serve``, uvicorn, one keep-alive client on loopback, one request at a time),
  a fresh server with the cache on (warmed by one untimed pass) and one with it off: ``POST /v1/recommend``
  with the 50 interactions (encode + retrieve every time); ``GET /v1/buyers/{id}/recommendations`` for stored
  buyers with the same 50 events (first request per buyer: read the events from MongoDB, encode, retrieve;
  then again: the cached buyer vector, retrieval only); ``POST /v1/buyers/encode`` (encoding alone); and
  ``GET /v1/products/{id}`` (HTTP + auth + one MongoDB read: the floor of any request that touches the stores).

Stored vectors are synthetic clustered 512-d unit vectors with real metadata (``bench.search._fill``), as in
the other benchmarks; the cost does not depend on how the vectors were made. Saved to
bench/results/recommend.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import show
from bench.data import clustered, product
from bench.encoders import ensure_vit_b32
from bench.http_servers import fill_ours, start_ours, stop

TYPES = ("view", "add_to_cart", "purchase")
SHARES = (0.7, 0.2, 0.1)
TOP_K = 10
TARGET_MS = 10.0  # the target for p50 over HTTP
RECOMMENDER_MS = 100.0  # the recommender this replaces


def histories(n_products: int, buyers: int, events: int, seed: int = 7) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.UTC)
    out = []
    for _ in range(buyers):
        products = rng.choice(n_products, events, replace=False)
        kinds = rng.choice(len(TYPES), events, p=SHARES)
        ages = np.sort(rng.uniform(0, 60, events))
        stamps = [(now - dt.timedelta(days=float(a))).isoformat() for a in ages]
        out.append([{"product_id": f"p{int(p):06d}", "type": TYPES[int(t)], "ts": ts}
                    for p, t, ts in zip(products, kinds, stamps, strict=True)])  # fmt: skip
    return out


class NumpyBaseline:
    """The same work on in-memory arrays: vectors, decayed weights, brute-force fused cosine, top-k, dicts."""

    def __init__(self, n: int, dim: int, weights: dict[str, float], half_life_days: float) -> None:
        self.image, self.text = clustered(n, dim, 1), clustered(n, dim, 2)  # as bench.search._fill stores them
        self.ids = [f"p{i:06d}" for i in range(n)]
        self.row = {pid: i for i, pid in enumerate(self.ids)}
        self.meta = {pid: product(i, [f"/bench/{i}.jpg"]).model_dump() for i, pid in enumerate(self.ids)}
        self.weights, self.half_life = weights, half_life_days

    def recommend(self, history: list[dict[str, Any]], k: int = TOP_K) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        totals: dict[str, float] = {}
        for e in history:
            age = max(0.0, (now - dt.datetime.fromisoformat(e["ts"])).total_seconds() / 86400)
            w = self.weights[e["type"]] * 0.5 ** (age / self.half_life)
            totals[e["product_id"]] = totals.get(e["product_id"], 0.0) + w
        rows = np.array([self.row[p] for p in totals])
        w = np.array(list(totals.values()), np.float32)
        b_img, b_txt = w @ self.image[rows], w @ self.text[rows]
        b_img /= np.linalg.norm(b_img)
        b_txt /= np.linalg.norm(b_txt)
        scores = 0.5 * (self.image @ b_img) + 0.5 * (self.text @ b_txt)
        bought = [self.row[e["product_id"]] for e in history if e["type"] == "purchase"]
        scores[bought] = -np.inf
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        # The reason: the history product each hit is closest to (mean cosine of the two spaces x its weight).
        sims = 0.5 * (self.image[top] @ self.image[rows].T + self.text[top] @ self.text[rows].T)
        because = np.argmax(sims * (1.0 + np.log1p(w)), axis=1)
        return [{"id": self.ids[i], "score": float(scores[i]), "because": self.ids[rows[b]],
                 "product": self.meta[self.ids[i]]} for i, b in zip(top, because, strict=True)]  # fmt: skip


Timings = dict[str, list[float]]


def _times(fn: Callable[[Any], object], items: list[Any], warmup: int = 5) -> list[float]:
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _in_process(repo: Path, root: Path, sessions: list[list[dict[str, Any]]]) -> Timings:
    from bench.search import _settings
    from pipeline.recommend.events import Interaction
    from pipeline.recommend.models import Exclude
    from pipeline.recommend.service import RecommendService
    from pipeline.stack import open_stack

    async with open_stack(_settings(repo, root)) as stack:
        warm = stack.recommend
        s = stack.settings
        cold = RecommendService(stack.index, stack.mongo, warm.store, stack.encoder,
                                s.recommend.model_copy(update={"vector_cache_entries": 0}), s.search,
                                s.qdrant.overfetch)  # fmt: skip
        parsed = [[Interaction.model_validate(e) for e in h] for h in sessions]

        async def timed(fn: Callable[[Any], Any], items: list[Any]) -> list[float]:
            for item in items[:5]:
                await fn(item)
            out = []
            for item in items:
                t = time.perf_counter()
                await fn(item)
                out.append((time.perf_counter() - t) * 1000)
            return out

        def session(rec: RecommendService) -> Callable[[Any], Any]:
            return lambda h: rec.for_session(h, TOP_K, None, Exclude.PURCHASED, False)

        out = {
            "session, cache off": await timed(session(cold), parsed),
            "encode, cache off": await timed(cold.encode, parsed),
        }
        for h in parsed:  # every product of the histories seen once: the vector cache is warm
            await warm.encode(h)
        out["session, cache warm"] = await timed(session(warm), parsed)
        out["encode, cache warm"] = await timed(warm.encode, parsed)
        check = await warm.for_session(parsed[0], TOP_K, None, Exclude.PURCHASED, False)
        assert check.strategy == "buyer" and len(check.hits) == TOP_K, check
        again = await cold.for_session(parsed[0], TOP_K, None, Exclude.PURCHASED, False)
        assert [h.id for h in again.hits] == [h.id for h in check.hits]
    return out


def _http(repo: Path, root: Path, sessions: list[list[dict[str, Any]]], cache: bool) -> tuple[Timings, Timings]:
    """The HTTP rows on a fresh server (vector cache on, warmed by one untimed pass; or off)."""
    key = "PIPELINE__RECOMMEND__VECTOR_CACHE_ENTRIES"
    saved = os.environ.pop(key, None)
    if not cache:
        os.environ[key] = "0"
    try:
        server = start_ours(repo, root, name="recommend" if cache else "recommend-nocache")
    finally:
        os.environ.pop(key, None)
        if saved is not None:
            os.environ[key] = saved
    took: Timings = {}
    tag = "" if cache else "-nocache"
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
            buyers = [f"bench-buyer{tag}-{i}" for i in range(len(sessions))]
            events = [{**e, "buyer_id": b} for b, h in zip(buyers, sessions, strict=True) for e in h]
            for i in range(0, len(events), 1000):
                r = client.post("/v1/events", json={"events": events[i : i + 1000]})
                r.raise_for_status()
                assert r.json()["unknown_products"] == 0, r.text

            def call(method: str, path: str, body: dict[str, Any] | None, name: str) -> None:
                r = client.request(method, path, json=body, params=None if body else {"top_k": TOP_K})
                r.raise_for_status()
                if "took_ms" in r.json():
                    took.setdefault(name, []).append(r.json()["took_ms"])

            body = lambda h: {"interactions": h, "top_k": TOP_K}  # noqa: E731
            out: Timings = {}
            if cache:
                for h in sessions:  # every product of the histories seen once: the vector cache is warm
                    call("POST", "/v1/buyers/encode", {"interactions": h}, "warm-up")
            out["recommend"] = _times(lambda h: call("POST", "/v1/recommend", body(h), "recommend"), sessions)
            if cache:
                path = lambda b: f"/v1/buyers/{b}/recommendations"  # noqa: E731
                out["cold"] = _times(lambda b: call("GET", path(b), None, "cold"), buyers, warmup=0)
                out["warm"] = _times(lambda b: call("GET", path(b), None, "warm"), buyers)
                out["encode"] = _times(lambda h: call("POST", "/v1/buyers/encode", {"interactions": h}, "x"), sessions)
                out["floor"] = _times(lambda h: call("GET", f"/v1/products/{h[0]['product_id']}", None, "x"), sessions)
            first = client.post("/v1/recommend", json=body(sessions[0])).json()
            assert first["strategy"] == "buyer" and len(first["hits"]) == TOP_K, first
    finally:
        stop(server)
    return out, took


def _fmt(ms: list[float]) -> str:
    p50 = statistics.median(ms)
    digits = 2 if p50 < 10 else 1
    return f"{p50:.{digits}f} / {float(np.percentile(ms, 99)):.{digits}f}"


def run(n: int = 10_000, buyers: int = 200, events: int = 50) -> None:
    from pipeline.config import RecommendSettings
    from pipeline.manifest import load_manifest

    repo = ensure_vit_b32()
    dim = load_manifest(repo).dim
    defaults = RecommendSettings()
    sessions = histories(n, buyers, events)
    load_before = os.getloadavg()[0]
    base = NumpyBaseline(n, dim, defaults.weights, defaults.half_life_days)
    numpy_ms = _times(base.recommend, sessions)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_ours(repo, root, n)
        inproc = asyncio.run(_in_process(repo, root, sessions))
        http, took = _http(repo, root, sessions, cache=True)
        http_off, took_off = _http(repo, root, sessions, cache=False)
    load_after = os.getloadavg()[0]
    ref = statistics.median(numpy_ms)
    inproc_warm = statistics.median(inproc["session, cache warm"])
    inproc_off = statistics.median(inproc["session, cache off"])

    def row(name: str, where: str, ms: list[float], server: list[float] | None = None, base: str = "") -> list[str]:
        """``base``: the row this one differs from in one thing (and its p50) — numpy (engine, database, code),
        or the same call in-process (HTTP)."""
        p50 = statistics.median(ms)
        against = {"numpy": ref, "in-process": inproc_warm, "in-process, off": inproc_off}.get(base)
        ratio = f"{p50 / against:.1f}x {base.split(',')[0]}" if against else ""
        return [name, where, _fmt(ms), f"{statistics.median(server):.2f}" if server else "", ratio,
                f"{RECOMMENDER_MS / p50:.0f}x under" if p50 < RECOMMENDER_MS else "over",
                ("yes" if p50 <= TARGET_MS else "no") if where == "HTTP" else ""]  # fmt: skip

    buyer_path = "GET /v1/buyers/{id}/recommendations"
    rows = [
        row("numpy baseline: encode + brute-force top 10, same work", "in-process", numpy_ms),
        row("RecommendService.for_session, vector cache warm", "in-process", inproc["session, cache warm"],
            base="numpy"),
        row("RecommendService.for_session, vector cache off", "in-process", inproc["session, cache off"],
            base="numpy"),
        row("RecommendService.encode alone, vector cache warm", "in-process", inproc["encode, cache warm"]),
        row("RecommendService.encode alone, vector cache off", "in-process", inproc["encode, cache off"]),
        row("POST /v1/recommend, 50 interactions, vector cache warm", "HTTP", http["recommend"], took["recommend"],
            base="in-process"),
        row("POST /v1/recommend, 50 interactions, vector cache off", "HTTP", http_off["recommend"],
            took_off["recommend"], base="in-process, off"),
        row(f"{buyer_path}, first: events read from MongoDB", "HTTP", http["cold"], took["cold"]),
        row(f"{buyer_path}, again: buyer vector cached", "HTTP", http["warm"], took["warm"]),
        row("POST /v1/buyers/encode, 50 interactions, vector cache warm", "HTTP", http["encode"]),
        row("GET /v1/products/{id}: HTTP + auth + one MongoDB read (the floor)", "HTTP", http["floor"]),
    ]  # fmt: skip
    over = statistics.median(http["recommend"]) - inproc_warm
    notes = (
        f"{n:,} products (512-d image and text vectors), {buyers} histories of {events} events over {events} distinct "
        f"products (70% views, 20% carts, 10% purchases over 60 days), top {TOP_K}, purchased products excluded; "
        f"{len(sessions)} timed requests per row after 5 untimed, one at a time. 'vector cache warm': every product "
        f"of the histories read once before (the steady state once a catalog of this size fits "
        f"PIPELINE__RECOMMEND__VECTOR_CACHE_ENTRIES, default {defaults.vector_cache_entries:,}); 'off': every "
        f"product's vectors read from the index on every request (=0; a fresh server). 'ratio' divides a row's p50 "
        f"by that of the row it differs from in one thing: the numpy baseline ({ref:.2f} ms; what differs: the "
        f"vector engine, MongoDB and the service's code, all in-process) or the same call in-process (what differs: "
        f"HTTP, JSON and the client). 'server ms': the took_ms the service reports (median). POST /v1/recommend over "
        f"HTTP minus the same call in-process (vector cache warm): {over:.2f} ms at p50. Target: p50 <= "
        f"{TARGET_MS:g} ms over HTTP; the recommender this replaces: {RECOMMENDER_MS:g} ms. Load average (1 min) "
        f"{load_before:.1f} before, {load_after:.1f} after ({os.cpu_count()} cores)."
    )
    show(
        f"Recommendations: buyer encoding + retrieval, {n:,} products, {events}-event histories, ms (p50 / p99)",
        [
            "request",
            "where",
            "p50 / p99",
            "server ms",
            "ratio (p50)",
            f"vs {RECOMMENDER_MS:g} ms",
            f"p50 <= {TARGET_MS:g} ms",
        ],
        rows,
        "recommend",
        notes,
    )
