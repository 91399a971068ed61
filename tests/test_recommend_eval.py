"""The offline evaluation of recommendations: the metrics on hand-computed cases, the hold-out split, the
simulated shoppers (deterministic; held-out purchases never in the history), and a smoke run on the test
stack (the tiny model, the test catalog, Qdrant Edge, the test mongod) in-process and through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from pipeline.recommend.evaluate import evaluate, ndcg_at_k, recall_at_k, split
from pipeline.recommend.events import EventType, ShopperEvent
from pipeline.recommend.simulate import CatalogItem, ShopperConfig, simulate
from tests.conftest import make_settings

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
ITEMS = [CatalogItem(f"{c}-{col}-{p}", c, col, p) for c in ("mug", "cap") for col in ("red", "blue", "green")
         for p in ("plain", "dotted")]  # fmt: skip


def test_recall_and_ndcg_on_hand_computed_cases():
    assert recall_at_k(["a", "b", "c"], {"b", "x"}, 3) == 0.5
    assert recall_at_k(["a", "b", "c"], {"b", "x"}, 1) == 0.0  # b is second: outside the top 1
    assert recall_at_k(["a"], set(), 10) == 0.0
    assert ndcg_at_k(["a", "b"], {"a"}, 10) == 1.0
    # Targets at ranks 2 and 3 of 3: (1/log2 3 + 1/log2 4) / (1 + 1/log2 3).
    want = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], {"a", "b"}, 3) == pytest.approx(want)
    assert ndcg_at_k(["x", "a", "b"], {"a", "b"}, 3) == pytest.approx(0.6934, abs=1e-4)
    # One target at rank 2: 1/log2 3; the ideal list has it first.
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0


def _event(buyer: str, product: str, kind: str, days: float, minutes: float = 0.0) -> ShopperEvent:
    ts = NOW - dt.timedelta(days=days) + dt.timedelta(minutes=minutes)
    return ShopperEvent(buyer_id=buyer, product_id=product, type=EventType(kind), ts=ts)


def test_split_holds_out_the_last_purchase_session():
    events = [
        _event("b1", "a", "view", 10), _event("b1", "a", "purchase", 10, 5),
        _event("b1", "c", "view", 3), _event("b1", "b", "view", 3, 2), _event("b1", "b", "purchase", 3, 4),
        _event("b1", "d", "view", 3, 6),  # same session, after the purchase: held out too
        _event("nobuy", "a", "view", 2),
        _event("first", "a", "view", 5), _event("first", "a", "purchase", 5, 1),  # nothing before its session
        _event("again", "a", "purchase", 9), _event("again", "a", "purchase", 1),  # re-bought: excluded by design
        ShopperEvent(buyer_id="b1", product_id="z", type=EventType.VIEW),  # no time: cannot be ordered
    ]  # fmt: skip
    cases, counts = split(events)
    assert [c.buyer_id for c in cases] == ["b1"]
    (case,) = cases
    assert case.targets == {"b"} and case.cutoff == NOW - dt.timedelta(days=3)
    assert [(e.product_id, e.type.value) for e in case.history] == [("a", "purchase"), ("a", "view")]  # newest first
    assert (counts.buyers, counts.no_purchase, counts.no_history, counts.repeat_only, counts.undated) == (4, 1, 1, 1, 1)
    two, _ = split(events, holdout=2)  # both of b1's purchases held out: nothing before the first one's session
    assert two == []


def test_the_simulator_is_deterministic_and_never_leaks_held_out_purchases():
    config = ShopperConfig(shoppers=80)
    first = simulate(ITEMS, config, seed=5, now=NOW)
    assert first == simulate(ITEMS, config, seed=5, now=NOW)
    assert first != simulate(ITEMS, config, seed=6, now=NOW)
    assert {e.product_id for e in first} <= {i.id for i in ITEMS}
    assert all(e.ts is not None and e.ts < NOW for e in first)
    kinds = {k: sum(e.type is k for e in first) for k in EventType}
    assert kinds[EventType.VIEW] > kinds[EventType.ADD_TO_CART] > kinds[EventType.PURCHASE] > 0
    cases, counts = split(first)
    assert len(cases) > 20 and counts.evaluated == len(cases)
    for case in cases:
        held = [e for e in first if e.buyer_id == case.buyer_id and e.ts is not None and e.ts >= case.cutoff]
        assert any(e.type is EventType.PURCHASE and e.product_id in case.targets for e in held)
        assert all(e.ts is not None and e.ts < case.cutoff for e in case.history)
        assert not {(e.product_id, e.type, e.ts) for e in held} & {(e.product_id, e.type, e.ts) for e in case.history}
        assert not case.targets & {e.product_id for e in case.history if e.type is EventType.PURCHASE}


@pytest.fixture
async def ingested(model_repository, catalog, tmp_path, mongo_uri):
    from pipeline.stack import open_stack

    async with open_stack(make_settings(model_repository, "edge", tmp_path, mongo_uri)) as stack:
        report = await stack.ingest.ingest(catalog)
        assert report.added == 24, report
        yield stack


async def test_evaluation_runs_the_methods_on_the_test_stack(ingested):
    from pipeline.recommend.simulate import stack_items

    items = await stack_items(ingested)
    assert len(items) == 24 and {i.category for i in items} == {"mug", "shirt", "poster"}
    events = simulate(items, ShopperConfig(shoppers=120), seed=1, now=dt.datetime.now(dt.UTC))
    report = await evaluate(ingested, events, source="test", k=5)
    names = [m.name for m in report.methods]
    assert len(names) == 5 and names[0].startswith("buyer vector") and names[0].endswith("(configured)")
    assert "no weights" in names[1] and "no recency" in names[2]
    assert names[3].startswith("popularity") and names[4] == "random"
    assert report.counts.evaluated > 50 and all(m.cases == report.counts.evaluated for m in report.methods)
    for m in report.methods:
        assert 0.0 <= m.recall <= 1.0 and 0.0 <= m.ndcg <= 1.0 and m.recall_ci >= 0
    by_name = {m.name: m for m in report.methods}
    assert (by_name["random"].recall, by_name["random"].ndcg) != (report.methods[0].recall, report.methods[0].ndcg)
    assert report.methods[0].delta_ndcg == 0.0
    headers, rows = report.table()
    assert len(rows) == 5 and all(len(r) == len(headers) for r in rows)
    left = await ingested.mongo.shopper_events.database.list_collection_names()
    assert not [c for c in left if c.startswith("shopper_events_eval_")]  # the run's temporary events are gone
    assert await ingested.mongo.shopper_events.count_documents({}) == 0  # nothing written where buyers live


def test_recommend_eval_cli_on_an_events_file(model_repository, catalog, mongo_uri, tmp_path):
    """``python -m pipeline recommend-eval --events FILE --json`` on the configured data, as `events import`
    reads the file; a missing demo folder is a one-line error."""
    import os
    import subprocess
    import sys
    import uuid

    from tests.service import service_env

    database = f"t_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **service_env(model_repository, tmp_path / "qdrant", mongo_uri, database)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env, timeout=300)  # fmt: skip
    assert run("ingest", str(catalog)).returncode == 0
    items = [CatalogItem(f"{c}-{col}-{v}", c, col, "") for c in ("mug", "shirt", "poster")
             for col in ("red", "blue", "green", "yellow") for v in (0, 1)]  # fmt: skip
    events = simulate(items, ShopperConfig(shoppers=40), seed=2, now=NOW)
    export = tmp_path / "events.csv"
    rows = [f"{e.buyer_id},{e.product_id},{e.type.value},{e.ts.isoformat() if e.ts else ''}\n" for e in events]
    export.write_text("distinct_id,item_id,event_name,timestamp\n" + "".join(rows))
    proc = run("recommend-eval", "--events", str(export), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["source"] == str(export) and got["events"] == len(events) and got["counts"]["evaluated"] > 10
    assert [m["name"] for m in got["methods"]][-1] == "random"
    assert all(0 <= m["recall"] <= 1 and 0 <= m["ndcg"] <= 1 for m in got["methods"])
    missing = run("recommend-eval", "--demo", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "make demo" in missing.stderr and "Traceback" not in missing.stderr
