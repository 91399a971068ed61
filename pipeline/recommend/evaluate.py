"""Offline evaluation of recommendations (``python -m pipeline recommend-eval``).

Protocol: per buyer, the last ``holdout`` purchases are held out, together with the rest of the session they
were made in (events less than ``session_gap_s`` apart), so nothing of that visit is seen; what came before is
the buyer's history. The targets are the products bought from there on that the buyer had not bought before
(those are excluded by design). Each method recommends ``k`` products from the history alone, and each buyer
scores recall@k (targets found / targets) and NDCG@k (binary gains); the table shows the means over buyers
with a 95% confidence interval, and each method's paired difference in NDCG from the first (the default).

The buyer-vector methods run the service's own code: ``RecommendService.for_session`` over the opened stack
(its index, encoder and MongoDB), the purchased products excluded as the API does by default, one service per
variant of the settings. Popularity is the service's fallback (the weighted event counts of the last
``popular_window_days``), over the training events of every buyer, stored for the run in a temporary
collection that is dropped afterwards. Random draws ``k`` products uniformly (fixed seed per buyer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import RecommendSettings
from pipeline.recommend.events import EventType, Interaction, ShopperEvent, ShopperEventStore, aware
from pipeline.recommend.models import Exclude
from pipeline.recommend.service import RecommendService
from pipeline.schemas import SearchFilters

if TYPE_CHECKING:
    from pipeline.stack import Stack


@dataclass(frozen=True)
class Case:
    """One buyer's evaluation: the history before the held-out session (newest first) and what they bought."""

    buyer_id: str
    history: tuple[Interaction, ...]
    targets: frozenset[str]
    cutoff: dt.datetime  # the held-out session's first event; every history event is earlier


@dataclass
class SplitCounts:
    buyers: int = 0
    evaluated: int = 0
    no_purchase: int = 0  # never bought anything: nothing to hold out
    no_history: int = 0  # nothing before the held-out session
    repeat_only: int = 0  # bought only what they had bought before (excluded from recommendations)
    undated: int = 0  # events without a time stamp (cannot be ordered): left out


def split(
    events: Iterable[ShopperEvent], holdout: int = 1, session_gap_s: float = 1800.0
) -> tuple[list[Case], SplitCounts]:
    """Each buyer's events → a ``Case`` (see the module's protocol), buyers in id order."""
    counts = SplitCounts()
    by_buyer: dict[str, list[ShopperEvent]] = {}
    for e in events:
        if e.ts is None:
            counts.undated += 1
        elif e.buyer_id is not None:  # an anonymous click on a search answer has no buyer to split by
            by_buyer.setdefault(e.buyer_id, []).append(e)
    utc = dt.datetime.now(dt.UTC)
    cases = []
    for buyer in sorted(by_buyer):
        counts.buyers += 1
        evs = sorted(by_buyer[buyer], key=lambda e: aware(e.ts, utc))
        times = [aware(e.ts, utc) for e in evs]
        purchases = [i for i, e in enumerate(evs) if e.type is EventType.PURCHASE]
        if not purchases:
            counts.no_purchase += 1
            continue
        start = purchases[-min(holdout, len(purchases))]
        while start > 0 and (times[start] - times[start - 1]).total_seconds() <= session_gap_s:
            start -= 1
        if start == 0:
            counts.no_history += 1
            continue
        before = {e.product_id for e in evs[:start] if e.type is EventType.PURCHASE}
        targets = frozenset(e.product_id for e in evs[start:] if e.type is EventType.PURCHASE) - before
        if not targets:
            counts.repeat_only += 1
            continue
        history = tuple(Interaction(product_id=e.product_id, type=e.type, ts=t)
                        for e, t in zip(evs[:start][::-1], times[:start][::-1], strict=True))  # fmt: skip
        cases.append(Case(buyer, history, targets, times[start]))
        counts.evaluated += 1
    return cases, counts


def recall_at_k(ranked: Sequence[str], targets: frozenset[str] | set[str], k: int) -> float:
    """Share of the targets among the first ``k`` recommendations (0 when there are no targets)."""
    return len(set(ranked[:k]) & targets) / len(targets) if targets else 0.0


def ndcg_at_k(ranked: Sequence[str], targets: frozenset[str] | set[str], k: int) -> float:
    """Normalised discounted cumulative gain with gain 1 for a target: Σ 1/log2(rank + 1) over the targets in
    the first ``k``, divided by the same sum for the best possible list."""
    dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(ranked[:k]) if pid in targets)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(targets), k)))
    return dcg / ideal if ideal else 0.0


def shift_to(events: Sequence[ShopperEvent], now: dt.datetime) -> list[ShopperEvent]:
    """The events moved in time so that the last one is just before ``now`` (a file from last year is
    evaluated as if it ended today: the popular window and the recency decay then mean what they say)."""
    dated = [aware(e.ts, now) for e in events if e.ts is not None]
    if not dated:
        return list(events)
    delta = now - dt.timedelta(seconds=1) - max(dated)
    return [e if e.ts is None else e.model_copy(update={"ts": aware(e.ts, now) + delta}) for e in events]


Ranker = Callable[[Case], Awaitable[list[str]]]
RankerFactory = Callable[[RecommendService], Ranker]  # given the service over the run's events


def _purchased(case: Case) -> set[str]:
    return {e.product_id for e in case.history if e.type is EventType.PURCHASE}


def session_ranker(service: RecommendService, k: int) -> Ranker:
    async def rank(case: Case) -> list[str]:
        out = await service.for_session(case.history, k, None, Exclude.PURCHASED, False)
        return [h.id for h in out.hits]

    return rank


def popularity_ranker(service: RecommendService, k: int) -> Ranker:
    async def rank(case: Case) -> list[str]:
        # The fallback the service gives a buyer with no usable history, with this buyer's purchases excluded.
        out = await service._popular(k, SearchFilters(), _purchased(case))
        return [h.id for h in out.hits]

    return rank


def random_ranker(ids: Sequence[str], k: int, seed: int) -> Ranker:
    pool = sorted(ids)

    async def rank(case: Case) -> list[str]:
        excluded = _purchased(case)
        rng = np.random.default_rng([seed, zlib.crc32(case.buyer_id.encode())])
        picks = rng.choice(len(pool), min(len(pool), k + len(excluded)), replace=False)
        return [pool[i] for i in picks if pool[i] not in excluded][:k]

    return rank


@dataclass
class MethodScore:
    name: str
    recall: float
    recall_ci: float
    ndcg: float
    ndcg_ci: float
    delta_ndcg: float  # paired, against the first method
    delta_ci: float
    cases: int


@dataclass
class EvalReport:
    source: str
    k: int
    holdout: int
    events: int
    products: int
    counts: SplitCounts
    methods: list[MethodScore] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def table(self) -> tuple[list[str], list[list[str]]]:
        k = self.k
        headers = ["method (weights view/cart/purchase)", f"recall@{k} (95% CI)", f"NDCG@{k} (95% CI)",
                   f"Δ NDCG@{k} vs first (95% CI)"]  # fmt: skip
        rows = [[m.name, f"{m.recall:.4f} ± {m.recall_ci:.4f}", f"{m.ndcg:.4f} ± {m.ndcg_ci:.4f}",
                 "—" if i == 0 else f"{m.delta_ndcg:+.4f} ± {m.delta_ci:.4f}"]
                for i, m in enumerate(self.methods)]  # fmt: skip
        return headers, rows

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.source}: {self.events:,} events, {c.buyers:,} buyers, {self.products:,} products; "
            f"{c.evaluated:,} buyers evaluated (last {self.holdout} purchase(s) and the rest of their session "
            f"held out); left out: {c.no_purchase:,} never bought, {c.no_history:,} nothing before the held-out "
            f"session, {c.repeat_only:,} only re-bought earlier purchases, {c.undated:,} undated events"
        )


def _ci(values: np.ndarray) -> float:
    return float(1.96 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


async def _score(cases: Sequence[Case], rank: Ranker, k: int, concurrency: int) -> tuple[np.ndarray, np.ndarray]:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> tuple[float, float]:
        async with gate:
            ranked = await rank(case)
        return recall_at_k(ranked, case.targets, k), ndcg_at_k(ranked, case.targets, k)

    pairs = await asyncio.gather(*(one(c) for c in cases))
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def weights_label(weights: dict[str, float]) -> str:
    return "/".join(f"{weights.get(t, 0.0):g}" for t in ("view", "add_to_cart", "purchase"))


def standard_variants(base: RecommendSettings) -> list[tuple[str, RecommendSettings]]:
    """The configured buyer vector, then the same without event weights (all 1) and without recency."""
    ones = dict.fromkeys(base.weights, 1.0)
    half = f"half-life {base.half_life_days:g} d" if base.half_life_days else "no recency"
    return [
        (f"buyer vector {weights_label(base.weights)}, {half} (configured)", base),
        (f"buyer vector, no weights (1/1/1), {half}", base.model_copy(update={"weights": ones})),
        (f"buyer vector {weights_label(base.weights)}, no recency", base.model_copy(update={"half_life_days": 0.0})),
    ]  # fmt: skip


def sweep_variants(base: RecommendSettings) -> list[tuple[str, RecommendSettings]]:
    """Other half-lives with the configured weights, and other weightings with the configured half-life."""
    out = []
    for half in (3.0, 7.0, 14.0, 30.0, 60.0, 120.0):
        if half != base.half_life_days:
            out.append((f"sweep: half-life {half:g} d", base.model_copy(update={"half_life_days": half})))
    for cart, purchase in ((1, 2), (2, 5), (3, 10), (5, 10), (5, 20), (10, 30), (10, 50)):
        weights = {**base.weights, "add_to_cart": float(cart), "purchase": float(purchase)}
        if weights != base.weights:
            out.append((f"sweep: weights {weights_label(weights)}", base.model_copy(update={"weights": weights})))
    carts_and_purchases = {"view": 0.0, "click": 0.0, "add_to_cart": 1.0, "purchase": 2.0}
    out.append(("sweep: weights 0/1/2 (views ignored)", base.model_copy(update={"weights": carts_and_purchases})))
    return out


async def evaluate(
    stack: Stack,
    events: Sequence[ShopperEvent],
    *,
    source: str,
    k: int = 10,
    holdout: int = 1,
    sweep: bool = False,
    extra: Sequence[tuple[str, RankerFactory]] = (),
    seed: int = 0,
    concurrency: int = 8,
) -> EvalReport:
    """Score every method on ``events`` (products the index does not hold are dropped first)."""
    known = await stack.index.product_ids()
    now = dt.datetime.now(dt.UTC)
    usable = shift_to([e for e in events if e.product_id in known], now)
    cases, counts = split(usable, holdout)
    report = EvalReport(source, k, holdout, len(usable), len(known), counts)
    if not cases:
        return report
    base = stack.settings.recommend
    variants = standard_variants(base) + (sweep_variants(base) if sweep else [])
    collection = stack.mongo.shopper_events.database[f"shopper_events_eval_{uuid.uuid4().hex[:12]}"]
    store = ShopperEventStore(collection)
    rows: list[tuple[str, np.ndarray, np.ndarray]] = []

    def service(settings: RecommendSettings) -> RecommendService:
        s = settings.model_copy(update={"buyer_cache_entries": 0})
        return RecommendService(stack.index, stack.mongo, store, stack.encoder, s, stack.settings.search,
                                stack.settings.qdrant.overfetch)  # fmt: skip

    try:
        training = [(ShopperEvent(buyer_id=c.buyer_id, product_id=e.product_id, type=e.type, ts=e.ts), e.ts or now)
                    for c in cases for e in c.history]  # fmt: skip
        for i in range(0, len(training), 5000):
            await store.insert(training[i : i + 5000])
        for name, settings in variants:
            rows.append((name, *await _score(cases, session_ranker(service(settings), k), k, concurrency)))
        default = service(base)
        for name, factory in extra:
            rows.append((name, *await _score(cases, factory(default), k, concurrency)))
        days = f"{base.popular_window_days:g}"
        rows.append((f"popularity (weighted events, last {days} d)",
                     *await _score(cases, popularity_ranker(default, k), k, concurrency)))  # fmt: skip
        rows.append(("random", *await _score(cases, random_ranker(sorted(known), k, seed), k, concurrency)))
    finally:
        await collection.drop()
    first = rows[0][2]
    for name, recall, ndcg in rows:
        diff = ndcg - first
        report.methods.append(MethodScore(name, float(recall.mean()), _ci(recall), float(ndcg.mean()), _ci(ndcg),
                                          float(diff.mean()), _ci(diff), len(recall)))  # fmt: skip
    return report


async def evaluate_simulated(stack: Stack, shoppers: int, seed: int, **options: Any) -> EvalReport:
    """``evaluate`` on ``shoppers`` simulated shoppers (``simulate``, default ``ShopperConfig``) of the stack's
    catalog; ``options`` as ``evaluate`` takes them."""
    from pipeline.recommend.simulate import ShopperConfig, simulate, stack_items

    items = await stack_items(stack)
    events = simulate(items, ShopperConfig(shoppers=shoppers), seed, dt.datetime.now(dt.UTC))
    options.setdefault("seed", seed)
    return await evaluate(stack, events, source=f"{shoppers:,} simulated shoppers (seed {seed})", **options)
