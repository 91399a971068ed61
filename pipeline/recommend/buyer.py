"""The buyer side of the shared space, as plain numpy: a buyer is the weighted mean of the products they
interacted with (each event weighted by its type, times an exponential recency decay), in the image space and
the text space, L2-normalised. Plus the two list operations recommendations need: maximal marginal relevance
(so ten near-identical items do not fill the page) and the reason a hit is shown."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.recommend.events import Interaction, aware
from pipeline.types import Modality

# The strongest event a buyer had with a product, in order, names the reason.
_STRENGTH = ("purchase", "add_to_cart", "click", "view")
_VERB = {"purchase": "purchased", "add_to_cart": "added to your cart", "click": "clicked", "view": "viewed"}


def product_point(stored: Mapping[Modality, Sequence[np.ndarray]]) -> dict[Modality, np.ndarray]:
    """A product's one vector per space: the mean of its image vectors (normalised), its text vector."""
    out: dict[Modality, np.ndarray] = {}
    for modality, vectors in stored.items():
        if not len(vectors):
            continue
        # One vector (every text vector, most image lists) is its own mean: skip np.mean's overhead.
        v = np.asarray(vectors[0], np.float32) if len(vectors) == 1 else np.mean(np.asarray(vectors, np.float32), 0)
        n = float(np.sqrt(v @ v))
        if n > 0:
            out[modality] = v / n
    return out


@dataclass
class Buyer:
    """A buyer (or a session) in the product space."""

    spaces: dict[Modality, np.ndarray]
    events_used: int  # events that counted (their products still exist)
    weights: dict[str, float]  # product id -> its total weight
    strongest: dict[str, str] = field(default_factory=dict)  # product id -> its strongest event type
    points: dict[str, dict[Modality, np.ndarray]] = field(default_factory=dict)  # interacted products' vectors
    # The interacted products' vectors as one matrix per space (built once, for ``closest_many``).
    _history: tuple[list[str], dict[Modality, tuple[np.ndarray, np.ndarray]], np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

    def history_matrices(self) -> tuple[list[str], dict[Modality, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """(product ids in ``points`` order, per space (vectors with zeros where a product lacks the space, a
        mask of those that have it), each product's ``1 + log1p(weight)``)."""
        if self._history is None:
            ids = list(self.points)
            spaces: dict[Modality, tuple[np.ndarray, np.ndarray]] = {}
            for m in Modality:
                have = np.array([m in self.points[p] for p in ids], bool)
                if have.any():
                    dim = next(self.points[p][m].shape[0] for p in ids if m in self.points[p])
                    zero = np.zeros(dim, np.float32)
                    spaces[m] = (np.stack([self.points[p].get(m, zero) for p in ids]).astype(np.float32), have)
            boost = 1.0 + np.log1p(np.array([self.weights.get(p, 0.0) for p in ids], np.float64))
            self._history = (ids, spaces, boost)
        return self._history


def event_weight(event: Interaction, weights: Mapping[str, float], half_life_days: float, now: dt.datetime) -> float:
    base = float(weights.get(event.type.value, 0.0))
    if half_life_days <= 0 or base == 0:
        return base
    age_days = max(0.0, (now - aware(event.ts, now)).total_seconds() / 86400)
    return base * 0.5 ** (age_days / half_life_days)


def encode_buyer(
    history: Sequence[Interaction],
    stored: Mapping[str, Mapping[Modality, Sequence[np.ndarray]]],
    weights: Mapping[str, float],
    half_life_days: float,
    now: dt.datetime,
) -> Buyer | None:
    """The buyer vector of ``history`` from the products' stored vectors (products missing from ``stored`` —
    deleted since — are skipped); None when nothing counts (no events, or none with a known product and a
    positive weight)."""
    needed = {e.product_id for e in history}
    points = {pid: product_point(vectors) for pid, vectors in stored.items() if pid in needed}
    return encode_points(history, points, weights, half_life_days, now)


def encode_points(
    history: Sequence[Interaction],
    points: Mapping[str, dict[Modality, np.ndarray]],
    weights: Mapping[str, float],
    half_life_days: float,
    now: dt.datetime,
) -> Buyer | None:
    """``encode_buyer`` from the products' points (``product_point``: one unit vector per space) instead."""
    totals: dict[str, float] = {}
    strongest: dict[str, str] = {}
    used = 0
    for event in history:
        if event.product_id not in points:
            continue
        w = event_weight(event, weights, half_life_days, now)
        if w <= 0:
            continue
        used += 1
        totals[event.product_id] = totals.get(event.product_id, 0.0) + w
        kind = event.type.value
        current = strongest.get(event.product_id)
        if current is None or _STRENGTH.index(kind) < _STRENGTH.index(current):
            strongest[event.product_id] = kind
    if not totals:
        return None
    points = {pid: points[pid] for pid in totals}
    spaces: dict[Modality, np.ndarray] = {}
    for modality in Modality:
        have = [pid for pid in totals if modality in points[pid]]
        if not have:
            continue
        # float64 weights: a history years old decays to weights far below float32's range; the ratios count.
        mass = np.array([totals[pid] for pid in have], np.float64)
        acc = (mass / mass.max()) @ np.stack([points[pid][modality] for pid in have]).astype(np.float64)
        n = float(np.sqrt(acc @ acc))
        if n > 0:
            spaces[modality] = (acc / n).astype(np.float32)
    if not spaces:
        return None
    return Buyer(spaces, used, totals, strongest, points)


def mmr(order: Sequence[str], relevance: Mapping[str, float], vectors: Mapping[str, np.ndarray], k: int,
        lam: float) -> list[str]:  # fmt: skip
    """Maximal marginal relevance: repeatedly take the candidate maximising
    ``lam * relevance - (1 - lam) * max cosine to those taken``; candidates without a vector keep their place
    after the rest. ``lam`` = 1 is the plain relevance order."""
    pool = [pid for pid in order if pid in vectors]
    chosen: list[str] = []
    if pool:
        mat = np.stack([vectors[p] for p in pool]).astype(np.float32)
        rel = np.array([relevance[p] for p in pool], np.float32)
        best_sim = np.full(len(pool), -np.inf, np.float32)
        taken = np.zeros(len(pool), bool)
        for _ in range(min(k, len(pool))):
            penalty = np.where(np.isfinite(best_sim), best_sim, 0.0)
            score = lam * rel - (1 - lam) * penalty
            score[taken] = -np.inf
            i = int(np.argmax(score))
            taken[i] = True
            chosen.append(pool[i])
            best_sim = np.maximum(best_sim, mat @ mat[i])
    rest = [pid for pid in order if pid not in vectors]
    return (chosen + rest)[:k]


def closest(point: Mapping[Modality, np.ndarray], buyer: Buyer) -> str | None:
    """The interacted product most like ``point`` (cosine averaged over the spaces both have, times
    ``1 + log1p(its weight)``, so a purchase outranks a passing view of a twin)."""
    return closest_many([point], buyer)[0]


def closest_many(points: Sequence[Mapping[Modality, np.ndarray]], buyer: Buyer) -> list[str | None]:
    """``closest`` for several products at once: one matrix product per space instead of a loop per pair."""
    ids, spaces, boost = buyer.history_matrices()
    if not points or not ids:
        return [None] * len(points)
    total = np.zeros((len(points), len(ids)), np.float64)
    count = np.zeros((len(points), len(ids)), np.float64)
    for m, (matrix, have) in spaces.items():
        rows = [i for i, p in enumerate(points) if m in p]
        if rows:
            sims = np.stack([points[i][m] for i in rows]).astype(np.float32) @ matrix.T
            total[rows] += np.where(have, sims, 0.0)
            count[rows] += have
    score = np.where(count > 0, total / np.maximum(count, 1.0) * boost, -np.inf)
    best = np.argmax(score, axis=1)
    return [ids[int(b)] if count[i].any() else None for i, b in enumerate(best)]


def reason(name: str, event_type: str) -> str:
    return f"similar to {name} you {_VERB.get(event_type, 'viewed')}"
