"""Validation: a candidate generation against the active one on the same held-out queries.

Two query sets: held-out catalog products (the title queries the photos: the image space alone, since a title
matched against its own title vector would tell nothing) and held-out clicks (the shopper's text through the
search's own spaces and fusion). Figures per set and model: recall@1/5/10 and MRR@10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.encoders.base import encode_queries
from pipeline.fusion import Fusion, best_per_product, fuse
from pipeline.lifecycle.generation import Generation
from pipeline.lifecycle.pairs import click_pairs, held_out, query_key, title_of
from pipeline.schemas import QueryKind, SearchFilters
from pipeline.search import WEIGHTS
from pipeline.stores.mongo import MongoStore
from pipeline.stores.vectors import SpaceQuery
from pipeline.types import Modality

KS = (1, 5, 10)


@dataclass(frozen=True)
class Query:
    text: str
    product_id: str


async def heldout_queries(mongo: MongoStore, settings: Settings) -> dict[str, list[Query]]:
    every, most = settings.models.heldout_every, settings.models.validation_queries
    catalog: list[Query] = []
    async for product in mongo.iter_products():
        if held_out(product.id, every):
            catalog.append(Query(title_of(product), product.id))
            if len(catalog) >= most:
                break
    clicks = [Query(c.text, c.product_id) for c in await click_pairs(mongo) if held_out(query_key(c.text), every)]
    return {"catalog": catalog, "clicks": clicks[:most]}


async def ranks(gen: Generation, queries: Sequence[Query], weights: dict[Modality, float], settings: Settings
                ) -> list[int | None]:  # fmt: skip
    """The rank (1-based, within the top 10) of each query's product in ``gen``; None when not in the top 10."""
    out: list[int | None] = []
    k = max(KS)
    for first in range(0, len(queries), 64):
        chunk = queries[first : first + 64]
        vectors = await encode_queries(gen.encoder, [q.text for q in chunk])  # each by its tower, as search does
        for query, vector in zip(chunk, vectors, strict=True):
            spaces = [SpaceQuery(vector, m) for m in weights]
            lists = await gen.index.search(spaces, SearchFilters(), k * settings.qdrant.overfetch)
            ranked = fuse([best_per_product(r) for r in lists], list(weights.values()), k,
                          Fusion(settings.search.fusion), settings.search.rrf_k)  # fmt: skip
            ids = [r.product_id for r in ranked]
            out.append(ids.index(query.product_id) + 1 if query.product_id in ids else None)
    return out


def figures(found: Sequence[int | None]) -> dict[str, float]:
    if not found:
        return {}
    out = {f"recall@{k}": round(float(np.mean([r is not None and r <= k for r in found])), 4) for k in KS}
    out["mrr"] = round(float(np.mean([1.0 / r if r else 0.0 for r in found])), 4)
    return out


async def compare(candidate: Generation, active: Generation, mongo: MongoStore, settings: Settings) -> dict[str, Any]:
    """Figures of both generations on the same held-out queries, and the verdict: refused when the candidate's
    recall@10 or MRR on all queries falls below the active one's by more than ``models.max_regression``."""
    queries = await heldout_queries(mongo, settings)
    weights = {"catalog": {Modality.IMAGE: 1.0}, "clicks": WEIGHTS[QueryKind.TEXT]}
    out: dict[str, Any] = {"queries": {name: len(q) for name, q in queries.items()}}
    pooled: dict[str, list[int | None]] = {"candidate": [], "active": []}
    for name, qs in queries.items():
        if not qs:
            continue
        cand = await ranks(candidate, qs, weights[name], settings)
        act = await ranks(active, qs, weights[name], settings)
        out[name] = {"candidate": figures(cand), "active": figures(act)}
        pooled["candidate"] += cand
        pooled["active"] += act
    out["all"] = {who: figures(found) for who, found in pooled.items()}
    out["candidate"], out["active"] = candidate.name, active.name
    limit = settings.models.max_regression
    worse = [m for m in ("recall@10", "mrr")
             if out["all"]["candidate"].get(m, 0.0) < out["all"]["active"].get(m, 0.0) - limit]  # fmt: skip
    if not pooled["candidate"]:
        out["refused"] = "no held-out queries to validate on (an empty catalog and no clicks)"
    elif worse:
        c, a = out["all"]["candidate"], out["all"]["active"]
        out["refused"] = (f"{candidate.name} is worse than {active.name} on held-out queries: "
                          + ", ".join(f"{m} {c[m]:.3f} vs {a[m]:.3f}" for m in worse)
                          + f" (more than PIPELINE__MODELS__MAX_REGRESSION={limit:g}); --force overrides")  # fmt: skip
    else:
        out["refused"] = None
    return out
