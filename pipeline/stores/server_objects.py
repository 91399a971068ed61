"""A Qdrant server's request objects (``qdrant_client.models``), built from plain data: filters and the
index settings' search parameters. Kept apart from :mod:`pipeline.stores.qdrant_server` (the adapter)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import models

from pipeline.schemas import SearchFilters
from pipeline.stores.index_config import IndexSpec
from pipeline.stores.vectors import FILTER_FIELDS
from pipeline.types import Modality


def build_filter(
    filters: SearchFilters, exclude: Sequence[str] = (), products: Sequence[str] = (), from_image: int = 0
) -> models.Filter | None:
    must: list[Any] = [
        models.FieldCondition(key=f, match=models.MatchValue(value=str(getattr(filters, f))))
        for f in FILTER_FIELDS
        if getattr(filters, f) is not None
    ]
    if filters.min_price is not None or filters.max_price is not None:
        must.append(
            models.FieldCondition(key="price", range=models.Range(gte=filters.min_price, lte=filters.max_price))
        )
    if products:
        must.append(models.FieldCondition(key="product_id", match=models.MatchAny(any=[str(p) for p in products])))
    if from_image:
        must.append(models.FieldCondition(key="image_index", range=models.Range(gte=from_image)))
    must_not: list[Any] = (
        [models.FieldCondition(key="product_id", match=models.MatchAny(any=[str(p) for p in exclude]))]
        if exclude
        else []
    )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def search_params(spec: IndexSpec | None, filtered: bool = False) -> models.SearchParams | None:
    if spec is None:
        return None
    quantization = None
    if spec.quantization == "int8":
        quantization = models.QuantizationSearchParams(rescore=spec.rescore, oversampling=spec.oversampling)
    return models.SearchParams(hnsw_ef=spec.search_ef(filtered), quantization=quantization)


def collection_config(dim: int, spec: IndexSpec | None, bulk: bool = False) -> dict[str, Any]:
    """A new collection's vector, HNSW, optimizer and quantisation configuration (``create_collection``'s
    keyword arguments). ``bulk``: indexing off (threshold 0) until the filled collection is switched on."""
    on_disk = spec.on_disk if spec else None
    params = models.VectorParams(size=dim, distance=models.Distance.COSINE, on_disk=on_disk)
    config: dict[str, Any] = {"vectors_config": {m.value: params for m in Modality}}
    if spec is None:
        return config
    kb = spec.threshold_kb(dim)
    config["hnsw_config"] = models.HnswConfigDiff(m=spec.m, ef_construct=spec.ef_construct, full_scan_threshold=kb)
    config["optimizers_config"] = models.OptimizersConfigDiff(indexing_threshold=0 if bulk else kb)
    if spec.quantization == "int8":
        config["quantization_config"] = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    return config
