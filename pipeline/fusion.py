"""Pure ranking: group point hits per product and fuse several vector spaces with reciprocal-rank fusion.

Qdrant Edge has no grouping, and fusion scores must mean the same on every engine, so both live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.types import Modality


@dataclass(frozen=True)
class PointHit:
    """One scored point from a vector search."""

    product_id: str
    image_index: int
    similarity: float  # cosine
    using: Modality  # the named vector searched


@dataclass(frozen=True)
class RankedProduct:
    product_id: str
    score: float
    similarity: float
    matched: Modality
    image_index: int | None


def best_per_product(hits: Sequence[PointHit]) -> list[PointHit]:
    """Keep each product's best point, in descending similarity; ties keep engine order."""
    best: dict[str, PointHit] = {}
    for hit in hits:
        if hit.product_id not in best or hit.similarity > best[hit.product_id].similarity:
            best[hit.product_id] = hit
    return sorted(best.values(), key=lambda h: -h.similarity)


def rrf_fuse(lists: Sequence[Sequence[PointHit]], weights: Sequence[float], k: int, limit: int) -> list[RankedProduct]:
    """Reciprocal-rank fusion of per-space rankings (already one hit per product each).

    score(p) = Σ weight_i / (k + rank_i(p)), rank from 1. The reported similarity and matched space are those
    of the list where the product ranked best. Ties break on similarity, then product id (deterministic).
    """
    scores: dict[str, float] = {}
    best: dict[str, tuple[int, PointHit]] = {}
    for ranking, weight in zip(lists, weights, strict=True):
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.product_id] = scores.get(hit.product_id, 0.0) + weight / (k + rank)
            if hit.product_id not in best or rank < best[hit.product_id][0]:
                best[hit.product_id] = (rank, hit)
    ordered = sorted(scores, key=lambda pid: (-scores[pid], -best[pid][1].similarity, pid))
    out = []
    for pid in ordered[:limit]:
        hit = best[pid][1]
        out.append(
            RankedProduct(
                product_id=pid,
                score=scores[pid],
                similarity=hit.similarity,
                matched=hit.using,
                image_index=hit.image_index if hit.using is Modality.IMAGE else None,
            )
        )
    return out
