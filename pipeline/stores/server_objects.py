"""A Qdrant server's request objects (``qdrant_client.models``), built from plain data: filters and the
index settings' search parameters. Kept apart from :mod:`pipeline.stores.qdrant_server` (the adapter)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import models

from pipeline.schemas import SearchFilters
from pipeline.stores.index_config import IndexSpec
from pipeline.stores.vectors import FILTER_FIELDS


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


def search_params(spec: IndexSpec | None) -> models.SearchParams | None:
    if spec is None:
        return None
    quantization = None
    if spec.quantization == "int8":
        quantization = models.QuantizationSearchParams(rescore=spec.rescore, oversampling=spec.oversampling)
    return models.SearchParams(hnsw_ef=spec.ef, quantization=quantization)
