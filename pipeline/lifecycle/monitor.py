"""Figures per generation from the logs MongoDB keeps: queries answered, mean top-1 similarity, and the
click-through rate at 1/5/10 (clicks on a result ranked within k, over the queries), so the active model can
be compared with the one before it on live traffic (the page's model panel; Prometheus has the same counts
as ``generation_*`` series for dashboards)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.errors import PyMongoError

from pipeline.errors import StoreUnavailable
from pipeline.stores.mongo import MongoStore


async def generation_figures(mongo: MongoStore, days: float = 7.0) -> dict[str, dict[str, Any]]:
    """Figures of the last ``days`` (the window keeps the read bounded: it uses the logs' time indexes)."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    try:
        queries = await (await mongo.events.aggregate([
            {"$match": {"ts": {"$gte": since}, "generation": {"$type": "string"}, "error": None}},
            {"$group": {"_id": "$generation", "queries": {"$sum": 1}, "top1": {"$avg": "$top_similarity"}}},
        ])).to_list(None)  # fmt: skip
        clicks = await (await mongo.shopper_events.aggregate([
            {"$match": {"ts": {"$gte": since}, "type": "click", "generation": {"$type": "string"}}},
            {"$group": {"_id": "$generation", "clicks": {"$sum": 1},
                        **{f"at{k}": {"$sum": {"$cond": [{"$and": [{"$ne": ["$rank", None]},
                                                                  {"$lte": ["$rank", k]}]}, 1, 0]}}
                           for k in (1, 5, 10)}}},
        ])).to_list(None)  # fmt: skip
    except PyMongoError as exc:
        raise StoreUnavailable(f"MongoDB: figures per generation: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for q in queries:
        out[q["_id"]] = {"queries": q["queries"], "mean_top1_similarity": round(q["top1"] or 0.0, 4), "clicks": 0}
    for c in clicks:
        row = out.setdefault(c["_id"], {"queries": 0, "mean_top1_similarity": None})
        row["clicks"] = c["clicks"]
        for k in (1, 5, 10):
            row[f"ctr@{k}"] = round(c[f"at{k}"] / row["queries"], 4) if row["queries"] else None
    for row in out.values():
        for k in (1, 5, 10):
            row.setdefault(f"ctr@{k}", 0.0 if row["queries"] else None)
    return out
