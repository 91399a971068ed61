"""Search routes: words, a photo (upload or URL), and "more like this"."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from pipeline.api.auth import SearchKey
from pipeline.api.deps import ServiceDep, only_params
from pipeline.api.errors import documented
from pipeline.api.fetch import check_url
from pipeline.errors import InvalidInput, UnsupportedMedia
from pipeline.schemas import SearchFilters, describe_errors
from pipeline.wire import TextQuery, UrlQuery, WireSearch

router = APIRouter(prefix="/v1", tags=["search"])

_IMAGE_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The photo (JPEG, PNG, WebP, GIF, BMP, TIFF)"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "filters": {"type": "string", "description": 'SearchFilters as JSON, e.g. {"color": "red"}'},
        "min_score": {"type": "number", "minimum": -1, "maximum": 1},
    },
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _IMAGE_FORM},
            "application/json": {"schema": {"$ref": "#/components/schemas/UrlQuery"}},
        },
    }
}


@router.post("/search/text", responses=documented(401, 403, 413, 422, 503))
async def search_text(body: TextQuery, svc: ServiceDep, _: SearchKey) -> WireSearch:
    """Products matching a few words (CLIP text → product photos and titles, fused)."""
    return svc.answer(await svc.stack.search.search_text(body.text, body.top_k, body.filters, body.min_score))


def _form_value(raw: Any, name: str, kind: type) -> Any:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidInput(f"{name}: expected a form field, got a file")
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInput(f"{name}: {raw[:50]!r} is not a valid {kind.__name__}") from None


@router.post("/search/image", responses=documented(401, 403, 413, 415, 422, 503), openapi_extra=IMAGE_BODY)
async def search_image(request: Request, svc: ServiceDep, _: SearchKey) -> WireSearch:
    """Products that look like a photo: a multipart upload (``file``, optional ``top_k``, ``filters`` as JSON,
    ``min_score``) or JSON ``{"url": ...}``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    search = svc.stack.search
    if content_type == "application/json":
        try:
            query = UrlQuery.model_validate_json(await request.body())
        except ValidationError as exc:
            raise InvalidInput(describe_errors(exc.errors())) from None
        data = await svc.stack.ingest.load_image(check_url(query.url), svc.urls)
        return svc.answer(await search.search_image(data, query.top_k, query.filters, query.min_score))
    if content_type != "multipart/form-data":
        raise UnsupportedMedia(f"send multipart/form-data with a file field, or JSON with a url (got {content_type!r})")
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except HTTPException as exc:  # malformed multipart, too many fields or files
        raise InvalidInput(f"multipart body: {exc.detail}") from None
    try:
        unknown = set(form.keys()) - set(_IMAGE_FORM["properties"])
        if unknown:
            raise InvalidInput(f"unknown form field(s): {', '.join(sorted(unknown))}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file: a photo is required (multipart field 'file')")
        media = (upload.content_type or "application/octet-stream").lower()
        if not (media.startswith("image/") or media == "application/octet-stream"):
            raise UnsupportedMedia(f"file: {media} is not an image")
        top_k = _form_value(form.get("top_k"), "top_k", int)
        min_score = _form_value(form.get("min_score"), "min_score", float)
        if top_k is not None and not 1 <= top_k <= 1000:
            raise InvalidInput(f"top_k must be between 1 and 1000, got {top_k}")
        if min_score is not None and not -1.0 <= min_score <= 1.0:  # also refuses nan
            raise InvalidInput(f"min_score must be between -1 and 1, got {min_score}")
        raw_filters = _form_value(form.get("filters"), "filters", str)
        data = await upload.read()
    finally:
        await form.close()
    filters = None
    if raw_filters:
        try:
            filters = SearchFilters.model_validate_json(raw_filters)  # pydantic's parser bounds nesting depth
        except ValidationError as exc:
            raise InvalidInput(f"filters: {describe_errors(exc.errors())}") from None
    return svc.answer(await search.search_image(data, top_k, filters, min_score))


_SIMILAR_PARAMS = ("top_k", "min_score", "category", "brand", "color", "min_price", "max_price")


@router.get(
    "/products/{product_id:path}/similar",
    responses=documented(401, 403, 404, 422, 503),
    dependencies=[Depends(only_params(*_SIMILAR_PARAMS))],
)
async def similar(
    product_id: str,
    svc: ServiceDep,
    _: SearchKey,
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    category: str | None = None,
    brand: str | None = None,
    color: str | None = None,
    min_price: Annotated[float | None, Query(ge=0)] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
) -> WireSearch:
    """More like this product (its stored vectors; the product itself left out), optionally filtered."""
    filters = SearchFilters(category=category, brand=brand, color=color, min_price=min_price, max_price=max_price)
    return svc.answer(await svc.stack.search.search_product(product_id, top_k, filters, min_score))
