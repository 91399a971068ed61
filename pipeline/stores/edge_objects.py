"""Qdrant Edge's request and configuration objects, built from plain data (filters, index settings).

Kept apart from :mod:`pipeline.stores.qdrant_edge` (the adapter: files, lock, calls) so each stays small.
``qdrant_edge`` is imported inside the functions: nothing heavy at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.schemas import SearchFilters
from pipeline.stores.index_config import IndexSpec
from pipeline.stores.vectors import FILTER_FIELDS
from pipeline.types import Modality


def edge() -> Any:
    import qdrant_edge

    return qdrant_edge


def build_filter(
    filters: SearchFilters, exclude: Sequence[str] = (), products: Sequence[str] = (), from_image: int = 0
) -> Any:
    q = edge()
    must: list[Any] = [
        q.FieldCondition(key=f, match=q.MatchValue(str(getattr(filters, f))))
        for f in FILTER_FIELDS
        if getattr(filters, f) is not None
    ]
    if filters.min_price is not None or filters.max_price is not None:
        must.append(q.FieldCondition(key="price", range=q.RangeFloat(gte=filters.min_price, lte=filters.max_price)))
    if products:
        must.append(q.FieldCondition(key="product_id", match=q.MatchAny([str(p) for p in products])))
    if from_image:
        must.append(q.FieldCondition(key="image_index", range=q.RangeFloat(gte=float(from_image))))
    must_not = [q.FieldCondition(key="product_id", match=q.MatchAny([str(p) for p in exclude]))] if exclude else None
    if not must and not must_not:
        return None
    return q.Filter(must=must or None, must_not=must_not)


def shard_config(dim: int, spec: IndexSpec | None) -> Any:
    """A new shard's configuration: the two named spaces, cosine; with ``spec``, its HNSW, INT8 and on-disk
    settings (thresholds in KB at this dimension). Without one, Qdrant's defaults (what shards were before)."""
    q = edge()
    on_disk = spec.on_disk if spec is not None else None
    params = q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine, on_disk=on_disk)
    vectors = {m.value: params for m in Modality}
    if spec is None:
        return q.EdgeConfig(vectors=vectors)
    kb = spec.threshold_kb(dim)
    quantization = None
    if spec.quantization == "int8":
        quantization = q.ScalarQuantizationConfig(type=q.ScalarType.Int8, quantile=0.99, always_ram=True)
    return q.EdgeConfig(
        vectors=vectors,
        hnsw_config=q.HnswIndexConfig(m=spec.m, ef_construct=spec.ef_construct, full_scan_threshold=kb),
        quantization_config=quantization,
        optimizers=q.EdgeOptimizersConfig(indexing_threshold=kb),
    )


def search_params(spec: IndexSpec | None, filtered: bool = False) -> Any:
    if spec is None:
        return None
    q = edge()
    quantization = None
    if spec.quantization == "int8":
        quantization = q.QuantizationSearchParams(rescore=spec.rescore, oversampling=spec.oversampling)
    return q.SearchParams(hnsw_ef=spec.search_ef(filtered), quantization=quantization)
