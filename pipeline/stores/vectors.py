"""The vector index interface (Qdrant Edge in-process, or a Qdrant server) and what both share.

Layout: one point per product image, id = UUID5(product id, image index), with two named vectors: ``image``
(that image's embedding) and ``text`` (the product's text embedding). The payload carries the product id, the
image index and the filterable fields. Each collection records the fingerprint of the model that filled it;
using it with another model is refused with a message that says to re-index.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.errors import ModelMismatch
from pipeline.fusion import PointHit
from pipeline.schemas import Product, SearchFilters
from pipeline.stores.index_config import IndexSpec
from pipeline.types import Modality

# Awaited with the seconds an index build has run so far, every few seconds while it runs (progress, cancel).
BuildWatch = Callable[[float], Awaitable[None]]

CLIP_TITLES = "clip"

_NAMESPACE = uuid.UUID("6f1c1a9e-3d4b-5c8e-9a7f-2b1d0c4e5f60")
FILTER_FIELDS = ("category", "brand", "color")
INDEXED_FIELDS = {
    "product_id": "keyword",
    "category": "keyword",
    "brand": "keyword",
    "color": "keyword",
    "price": "float",
    "image_index": "integer",
}


def point_id(product_id: str, image_index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{product_id}\0{image_index}"))


def category_levels(category: str) -> list[str]:
    """A category path (``Electronics / Audio / Headphones``, or with ``>``) kept whole and filterable by any
    level: the path itself, then each level and each leading sub-path."""
    parts = [p.strip() for p in re.split(r"\s*[/>]\s*", category) if p.strip()]
    prefixes = [" / ".join(parts[: i + 1]) for i in range(1, len(parts) - 1)]
    return list(dict.fromkeys([category, *parts, *prefixes])) if len(parts) > 1 else [category]


def payload_of(product: Product, image_index: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "product_id": product.id,
        "image_index": image_index,
        **{f: getattr(product, f) for f in FILTER_FIELDS if getattr(product, f) is not None},
        **({"price": float(product.price)} if product.price is not None else {}),
    }
    if product.category:  # a keyword array matches a filter on any of its values
        payload["category"] = category_levels(product.category)
    return payload


@dataclass(frozen=True)
class VectorPoint:
    product_id: str
    image_index: int
    image: np.ndarray
    text: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.product_id, self.image_index)


@dataclass(frozen=True)
class SpaceQuery:
    vector: np.ndarray
    using: Modality


@dataclass(frozen=True)
class ModelStamp:
    """What a collection records about the model that filled it."""

    fingerprint: str
    dim: int
    model: str
    # The tower that embedded the titles (the text space): "clip", or the multilingual tower's fingerprint for a
    # catalog in another language (PIPELINE__ENCODER__CATALOG_LANGUAGE). Collections before it: "clip".
    titles: str = CLIP_TITLES

    @classmethod
    def of(cls, info: Any) -> ModelStamp:
        """The stamp of what an encoder (its ``EncoderInfo``) writes."""
        return cls(info.fingerprint, info.dim, info.model, info.titles)

    def matches(self, other: ModelStamp | None) -> bool:
        """The same vectors: model, dimension and title tower (``model``, a name, may differ for the same
        weights exported from another folder)."""
        return other is not None and (self.fingerprint, self.dim, self.titles) == (other.fingerprint, other.dim,
                                                                                   other.titles)  # fmt: skip

    def titles_name(self) -> str:
        return "CLIP's text tower" if self.titles == CLIP_TITLES else f"the multilingual tower {self.titles[:12]}"


@dataclass(frozen=True)
class IndexInfo:
    backend: str
    collection: str
    points: int
    stamp: ModelStamp | None
    index: IndexSpec | None = None  # what the live collection was built with (None: before index settings)
    indexed_vectors: int | None = None  # vectors in HNSW graphs (all spaces); the rest are scanned

    def graph_due(self, spaces: int, written: int = 0) -> bool:
        """Qdrant Edge (which builds graphs only in a re-index) holds ``exact_below`` points or more outside any
        graph, scanned by every query: added since the last re-index, or ``written`` (added or updated) by a
        job. An update moves a point out of its graph, which the engine's counts do not show (the old copy still
        counts as indexed until a rebuild)."""
        if self.backend != "qdrant-edge" or self.index is None:
            return False
        return max(self.points - (self.indexed_vectors or 0) / spaces, written) >= self.index.exact_below


def check_stamp(found: ModelStamp | None, expected: ModelStamp, where: str) -> None:
    if found is not None and found.fingerprint != expected.fingerprint:
        raise ModelMismatch(
            f"{where} was filled by model {found.model} (fingerprint {found.fingerprint[:12]}), but the encoder is "
            f"{expected.model}; vectors of two models never mix: run `python -m pipeline reindex`"
        )
    if found is not None and found.titles != expected.titles:
        raise ModelMismatch(
            f"{where} has its titles embedded by {found.titles_name()}, but this encoder embeds them with "
            f"{expected.titles_name()} (PIPELINE__ENCODER__CATALOG_LANGUAGE, TEXT_TOWER): title vectors of two towers "
            "never mix: run `python -m pipeline reindex`"
        )


EXCLUDE_FEW = 4  # leaving out up to this many products keeps a search's neighbourhood (see narrows)


def narrows(filters: SearchFilters, exclude: Sequence[str] = ()) -> bool:
    """Whether a search's filter keeps only part of the catalog (a category, a brand, a price range) or leaves
    out many products (a buyer's history, which is the query's own neighbourhood): the graph walk then goes
    further (``ef_filtered``). Leaving out a few ("more like this" drops the product itself) does not."""
    return filters.model_dump(exclude_none=True) != {} or len(exclude) > EXCLUDE_FEW


HIT_FIELDS = ("product_id", "image_index")  # the payload a search hit is read from (hit_of)


def hit_of(payload: dict[str, Any] | None, score: float, using: Modality) -> PointHit:
    payload = payload or {}
    return PointHit(str(payload.get("product_id")), int(payload.get("image_index", 0)), float(score), using)


def vectors_by_modality(records: Sequence[Any]) -> dict[Modality, list[np.ndarray]]:
    """A product's stored points (objects with ``payload`` and a named-vector ``vector`` dict) → its image
    vectors in image order and its text vector (the same one rides on every image point, so one is kept)."""
    records = sorted(records, key=lambda r: int((r.payload or {}).get("image_index", 0)))
    out: dict[Modality, list[np.ndarray]] = {}
    for modality in Modality:
        vectors = [np.asarray(r.vector[modality.value], np.float32) for r in records]
        if modality is Modality.TEXT:
            vectors = vectors[:1]
        if vectors:
            out[modality] = vectors
    return out


def vectors_by_product(records: Sequence[Any]) -> dict[str, dict[Modality, list[np.ndarray]]]:
    """Several products' stored points → each product's vectors, as :func:`vectors_by_modality` gives them."""
    grouped: dict[str, list[Any]] = {}
    for record in records:
        grouped.setdefault(str((record.payload or {}).get("product_id")), []).append(record)
    return {pid: vectors_by_modality(group) for pid, group in grouped.items()}


class VectorIndex(Protocol):
    """Async vector store. Every method raises StoreUnavailable when the engine cannot be reached."""

    async def open(self, stamp: ModelStamp) -> None:
        """Create the collection if absent (recording ``stamp``) or open it; refuses later use on a mismatch."""
        ...

    async def upsert(self, points: Sequence[VectorPoint]) -> None: ...

    async def delete_products(self, product_ids: Sequence[str], from_image: int = 0) -> None:
        """Delete the products' points with image index ≥ ``from_image`` (0: all of them)."""
        ...

    async def search(
        self,
        queries: Sequence[SpaceQuery],
        filters: SearchFilters,
        limit: int,
        min_similarity: float | None = None,
        exclude: Sequence[str] = (),
    ) -> list[list[PointHit]]:
        """One ranked point list per query, best first, at most ``limit`` each; products in ``exclude`` left out."""
        ...

    async def product_vectors(self, product_id: str) -> dict[Modality, list[np.ndarray]]:
        """The stored vectors of one product (image vectors in image order); empty when unknown."""
        ...

    async def vectors_of(
        self, product_ids: Sequence[str], check: bool = True
    ) -> dict[str, dict[Modality, list[np.ndarray]]]:
        """The stored vectors of several products in one read; unknown ids are absent. ``check=False``: whatever
        model's they are (a re-index reusing image vectors whose titles another tower embedded)."""
        ...

    async def product_ids(self) -> set[str]: ...

    async def info(self) -> IndexInfo: ...

    def rebuild(self, stamp: ModelStamp, watch: BuildWatch | None = None) -> AbstractAsyncContextManager[VectorIndex]:
        """A fresh, empty collection to fill; on clean exit its index is built and it replaces the live one
        atomically. ``watch(seconds)`` is awaited every few seconds while the engine builds the index; an
        exception it raises abandons the rebuild (the new collection dropped, the live one untouched)."""
        ...

    async def drop(self) -> None:
        """Delete the collection (a retired generation's) and close the handle."""
        ...

    async def aclose(self) -> None: ...
