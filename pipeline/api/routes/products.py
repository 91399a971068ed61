"""Catalog routes: upsert one or a batch (embedded and indexed before the answer), read, list, delete."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import ValidationError

from pipeline.api.auth import AdminKey, Principal, SearchKey, WriteKey
from pipeline.api.deps import Service, ServiceDep, only_params
from pipeline.api.errors import documented
from pipeline.api.uploads import image_ref
from pipeline.errors import InvalidInput, NotFound
from pipeline.schemas import Outcome, Product, describe_errors
from pipeline.sources import describe, open_source, spec_from_settings
from pipeline.wire import Batch, BatchResult, Deleted, IdPage, ProductIn, ProductOut, RowResult

router = APIRouter(prefix="/v1", tags=["products"])


async def _product(svc: Service, item: ProductIn, pid: str, who: Principal) -> Product:
    """A request's product as stored: image references resolved, every field validated."""
    refs = []
    for i, ref in enumerate(item.images):
        name = f"product {pid!r} image {i}"
        refs.append(await asyncio.to_thread(image_ref, ref, svc.uploads, svc.settings.limits, who.local, name))
    try:
        return Product.model_validate({**item.model_dump(exclude={"id"}), "id": pid, "images": refs})
    except ValidationError as exc:
        raise InvalidInput(f"product {pid!r}: {describe_errors(exc.errors())}") from None


async def _upsert(svc: Service, products: list[Product], who: Principal) -> list[Outcome]:
    # The service's own user may name loopback image URLs (its own test servers, a local CDN); others may not.
    # In chunks of the ingest batch size: a 1,000-row request never holds 1,000 rows of decoded images at once.
    outcomes: list[Outcome] = []
    step = svc.settings.ingest.batch_size
    for start in range(0, len(products), step):
        chunk = products[start : start + step]
        outcomes += await svc.stack.ingest.upsert(chunk, http=None if who.local else svc.urls)
    svc.health_cache = None  # counts changed
    return outcomes


@router.put("/products/{product_id:path}", responses=documented(401, 403, 404, 413, 422, 503))
async def put_product(product_id: str, body: ProductIn, svc: ServiceDep, who: WriteKey) -> RowResult:
    """Create or replace one product; it is embedded and indexed before the answer. Idempotent: the same
    content again is ``unchanged`` and costs no embedding."""
    if body.id is not None and body.id != product_id:
        raise InvalidInput(f"id {body.id!r} in the body differs from {product_id!r} in the path")
    outcome = (await _upsert(svc, [await _product(svc, body, product_id, who)], who))[0]
    if outcome.status == "rejected":
        raise InvalidInput(outcome.error or f"product {product_id!r} was rejected")
    return RowResult(id=outcome.id, status=outcome.status)


@router.post("/products/batch", responses=documented(401, 403, 413, 422, 503))
async def put_batch(body: Batch, svc: ServiceDep, who: WriteKey) -> BatchResult:
    """Up to 1,000 products; one result per row, in order. A bad row is rejected alone."""
    results: list[RowResult | None] = [None] * len(body.products)
    valid: list[tuple[int, Product]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(body.products):
        if not item.id:
            results[i] = RowResult(id="", status="rejected", error=f"row {i}: id is required in a batch")
            continue
        if item.id in seen:
            results[i] = RowResult(id=item.id, status="rejected", error=f"duplicate id (first at row {seen[item.id]})")
            continue
        seen[item.id] = i
        try:
            valid.append((i, await _product(svc, item, item.id, who)))
        except InvalidInput as exc:
            results[i] = RowResult(id=item.id, status="rejected", error=str(exc))
    outcomes = await _upsert(svc, [p for _, p in valid], who) if valid else []
    for (i, _), outcome in zip(valid, outcomes, strict=True):
        results[i] = RowResult(id=outcome.id, status=outcome.status, error=outcome.error)
    rows = [r for r in results if r is not None]
    count = {s: sum(r.status == s for r in rows) for s in ("added", "updated", "unchanged", "rejected")}
    return BatchResult(results=rows, **count)


@router.get("/products/{product_id:path}", responses=documented(401, 403, 404, 422, 503))
async def get_product(product_id: str, svc: ServiceDep, _: SearchKey) -> ProductOut:
    """A product's metadata and whether its vectors (from the serving model) are in the index."""
    products, states = await svc.stack.mongo.product_states([product_id])
    if product_id not in products:
        raise NotFound(f"unknown product id {product_id!r}")
    state = states[product_id]
    indexed = bool(state.content_hash) and state.indexed_hash == state.content_hash
    indexed = indexed and state.fingerprint == svc.stack.encoder.info.fingerprint
    return ProductOut(product=products[product_id], indexed=indexed)


@router.post("/products/{product_id:path}/refresh", responses=documented(401, 403, 404, 422, 502, 503))
async def refresh_product(product_id: str, svc: ServiceDep, _: WriteKey) -> RowResult:
    """Read one product again from the configured catalog source (``PIPELINE__SOURCE__*``) by its id and
    re-embed it, images fetched afresh, before the answer. 404 when the source has no such product (the copy
    here stays: ``DELETE`` it, or run a ``sync`` job with ``delete_missing``)."""
    spec = spec_from_settings(svc.settings.source)
    async with open_source(spec, svc.settings.ingest.strict_fields) as reader:
        row = await reader.by_id(product_id)
        if row is None:
            raise NotFound(f"{describe(spec)} has no product {product_id!r}")
        if row.product is None:
            raise InvalidInput(f"{describe(spec)}: product {product_id!r}: {row.error}")
        if row.product.id != product_id:
            raise InvalidInput(f"{describe(spec)}: the by-id query for {product_id!r} returned {row.product.id!r}")
        outcome = (await svc.stack.ingest.upsert([row.product], force=True, source=reader.key))[0]
    svc.health_cache = None
    if outcome.status == "rejected":
        raise InvalidInput(outcome.error or f"product {product_id!r} was rejected")
    return RowResult(id=outcome.id, status=outcome.status)


@router.delete("/products/{product_id:path}", responses=documented(401, 403, 404, 422, 503))
async def delete_product(product_id: str, svc: ServiceDep, _: WriteKey) -> Deleted:
    """Delete a product from MongoDB and the index."""
    deleted, _unknown = await svc.stack.ingest.delete([product_id])
    svc.health_cache = None
    if not deleted:
        raise NotFound(f"unknown product id {product_id!r}")
    return Deleted(id=product_id, deleted=True)


@router.get(
    "/products", responses=documented(401, 403, 422, 503), dependencies=[Depends(only_params("cursor", "limit"))]
)
async def list_products(
    svc: ServiceDep,
    _: SearchKey,
    cursor: Annotated[str | None, Query(max_length=256, description="The last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> IdPage:
    """Product ids in ascending order, a page at a time."""
    ids = await svc.stack.mongo.list_ids(cursor, limit)
    return IdPage(ids=ids, next_cursor=ids[-1] if len(ids) == limit else None)


@router.get("/stats", responses=documented(401, 403, 503))
async def stats(svc: ServiceDep, _: AdminKey) -> dict[str, Any]:
    """Counts in MongoDB and Qdrant and whether they hold the same products (reads every id: admin only);
    model, cache, event log."""
    return await svc.stack.status(deep=True)


@router.get("/facets", responses=documented(401, 403, 503))
async def facets(svc: ServiceDep, _: SearchKey) -> dict[str, list[Any]]:
    """Distinct categories, brands and colours, and the price range: what a filter panel offers."""
    return await svc.stack.mongo.facets()
