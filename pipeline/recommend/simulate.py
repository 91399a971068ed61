"""Simulated shoppers for the offline evaluation (``python -m pipeline recommend-eval``).

Each shopper has a hidden taste: one distribution over the catalog's categories, one over its colours and one
over its patterns (Dirichlet draws; a small concentration makes focused shoppers). How much a product suits a
shopper (its *match*) is the product of the three probabilities of its category, colour and pattern. Products
also have a popularity shared by every shopper (log-normal), so some red mugs are bought more than others.

A shopper's sessions are spread over the past weeks. In a session the shopper views a few products: most drawn
by match times popularity, some (``explore``) by popularity alone (browsing the front page, not their taste).
A viewed product goes to the cart with a chance that grows with its match (relative to the shopper's best
match), and a carted product is bought at checkout with a fixed chance; a product bought once is not bought
again. Between sessions the taste drifts toward a fresh draw, by half every ``drift_days`` (a shopper's older
events say less about what they want now).

What the simulator assumes is what it measures: weights beat no weights here because carts and purchases are
drawn from the taste and exploratory views are not; recency helps as much as tastes drift. The same evaluation
runs on a real events file (``--events``), which is the measurement that counts for a real shop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.recommend.events import EventType, ShopperEvent
from pipeline.schemas import Product

if TYPE_CHECKING:
    from pipeline.stack import Stack


@dataclass(frozen=True)
class CatalogItem:
    id: str
    category: str
    color: str
    pattern: str


def catalog_items(products: Iterable[Product]) -> list[CatalogItem]:
    """The facets a taste is over: category, colour and the ``pattern`` attribute ("" when absent)."""
    items = []
    for p in products:
        pattern = (p.attributes or {}).get("pattern", "")
        items.append(CatalogItem(p.id, p.category or "", p.color or "", str(pattern)))
    return sorted(items, key=lambda i: i.id)


@dataclass(frozen=True)
class ShopperConfig:
    shoppers: int = 1000
    weeks: float = 12.0  # sessions are spread over this many past weeks
    sessions: float = 6.0  # mean sessions per shopper (at least one)
    views: float = 6.0  # mean views per session (at least one)
    explore: float = 0.3  # share of views drawn from popularity alone, not from the taste
    concentration: float = 0.3  # Dirichlet concentration of a taste (small: focused shoppers)
    drift_days: float = 30.0  # a taste moves halfway toward a fresh draw every this many days (0: never)
    cart: float = 0.5  # chance that a viewed product of the shopper's best match goes to the cart
    purchase: float = 0.6  # chance that a carted product is bought at checkout
    popularity: float = 1.0  # sigma of the products' log-normal popularity


class _Facets:
    """The catalog as three integer columns (category, colour, pattern indices) and a popularity column."""

    def __init__(self, items: Sequence[CatalogItem], popularity: float, rng: np.random.Generator) -> None:
        self.ids = [i.id for i in items]
        self.columns = []
        for name in ("category", "color", "pattern"):
            values = sorted({getattr(i, name) for i in items})
            index = {v: k for k, v in enumerate(values)}
            self.columns.append(np.array([index[getattr(i, name)] for i in items], np.int64))
        self.sizes = [int(c.max()) + 1 for c in self.columns]
        pop = rng.lognormal(0.0, popularity, len(items)) if popularity > 0 else np.ones(len(items))
        self.popularity = pop / pop.sum()

    def match(self, taste: Sequence[np.ndarray]) -> np.ndarray:
        out = np.ones(len(self.ids))
        for column, dist in zip(self.columns, taste, strict=True):
            out *= dist[column]
        return out


def _draw_taste(sizes: Sequence[int], concentration: float, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.dirichlet(np.full(n, concentration)) if n > 1 else np.ones(1) for n in sizes]


def simulate(
    items: Sequence[CatalogItem], config: ShopperConfig, seed: int, now: dt.datetime, prefix: str = "sim"
) -> list[ShopperEvent]:
    """Events of ``config.shoppers`` shoppers (ids ``{prefix}-{seed}-{n}``), stamped before ``now``, sorted by
    buyer then time. The same items, config, seed and now give the same events."""
    if not items:
        return []
    rng = np.random.default_rng(seed)
    facets = _Facets(items, config.popularity, rng)
    n_items = len(items)
    events: list[ShopperEvent] = []
    span_days = config.weeks * 7
    for s in range(config.shoppers):
        buyer = f"{prefix}-{seed}-{s:05d}"
        taste = _draw_taste(facets.sizes, config.concentration, rng)
        starts = np.sort(rng.uniform(0.05, span_days, 1 + rng.poisson(max(0.0, config.sessions - 1))))[::-1]
        bought: set[int] = set()
        previous_start = None
        for days_ago in starts:  # oldest session first
            if previous_start is not None and config.drift_days > 0:
                keep = 0.5 ** ((previous_start - days_ago) / config.drift_days)
                fresh = _draw_taste(facets.sizes, config.concentration, rng)
                taste = [keep * t + (1 - keep) * f for t, f in zip(taste, fresh, strict=True)]
            previous_start = days_ago
            match = facets.match(taste)
            by_taste = match * facets.popularity
            by_taste /= by_taste.sum()
            n_views = 1 + rng.poisson(max(0.0, config.views - 1))
            explore = rng.random(n_views) < config.explore
            viewed = np.where(
                explore, rng.choice(n_items, n_views, p=facets.popularity), rng.choice(n_items, n_views, p=by_taste)
            )
            relative = match / match.max()
            clock = now - dt.timedelta(days=float(days_ago))
            carted: list[int] = []
            for i in viewed.tolist():
                clock += dt.timedelta(seconds=float(rng.uniform(20, 180)))
                events.append(ShopperEvent(buyer_id=buyer, product_id=facets.ids[i], type=EventType.VIEW, ts=clock))
                if i not in carted and rng.random() < config.cart * relative[i]:
                    clock += dt.timedelta(seconds=float(rng.uniform(5, 60)))
                    carted.append(i)
                    events.append(
                        ShopperEvent(buyer_id=buyer, product_id=facets.ids[i], type=EventType.ADD_TO_CART, ts=clock)
                    )
            clock += dt.timedelta(seconds=60)
            for i in carted:
                if i not in bought and rng.random() < config.purchase:
                    bought.add(i)
                    events.append(
                        ShopperEvent(buyer_id=buyer, product_id=facets.ids[i], type=EventType.PURCHASE, ts=clock)
                    )
    return events


async def stack_items(stack: Stack) -> list[CatalogItem]:
    """The catalog items of an opened stack: products with vectors in its index."""
    known = await stack.index.product_ids()
    return catalog_items([p async for p in stack.mongo.iter_products() if p.id in known])
