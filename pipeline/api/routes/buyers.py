"""Shopper events and recommendations: ``POST /v1/events``, "recommended for you" for a stored buyer or an
anonymous session, and the buyer vector itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from pipeline.api.auth import SearchKey
from pipeline.api.deps import ServiceDep, only_params
from pipeline.api.errors import documented
from pipeline.errors import Forbidden
from pipeline.recommend.events import BuyerId
from pipeline.recommend.models import (
    BuyerVectorOut,
    EncodeIn,
    EventsIn,
    EventsResult,
    Exclude,
    Recommendations,
    SessionIn,
)
from pipeline.schemas import SearchFilters
from pipeline.stores.keys import Scope

router = APIRouter(prefix="/v1", tags=["recommendations"])
_PARAMS = ("top_k", "category", "brand", "color", "min_price", "max_price", "exclude", "diversify")


@router.post("/events", responses=documented(401, 403, 413, 422, 503))
async def post_events(body: EventsIn, svc: ServiceDep, who: SearchKey) -> EventsResult:
    """Up to 1,000 shopper events (``view``, ``click``, ``add_to_cart``, ``purchase``). An event with an
    ``event_id`` is stored once however often it is sent; events naming no product are ignored and counted;
    one stamped in the future is refused alone. The buyers' recommendations follow at once.

    A click on a search result names the answer's ``query_id`` (``buyer_id`` is then optional): a training pair
    for the model and a click-through for the generation that answered; a search key may send those (a shop's
    page holds one) when they name no buyer and the product was among that answer's results; every other event
    needs write scope."""
    trusted = who.scope.covers(Scope.WRITE)
    if not trusted and any(e.query_id is None or e.buyer_id is not None for e in body.events):
        raise Forbidden(f"key {who.name!r} has scope {who.scope}: it may record anonymous clicks on search answers "
                        "(a query_id, no buyer_id) only; other events need write scope")  # fmt: skip
    return await svc.stack.recommend.record(body.events, shown_only=not trusted)


@router.get(
    "/buyers/{buyer_id}/recommendations",
    responses=documented(401, 403, 422, 503),
    dependencies=[Depends(only_params(*_PARAMS))],
)
async def buyer_recommendations(
    svc: ServiceDep,
    _: SearchKey,
    buyer_id: Annotated[BuyerId, Path()],
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
    category: str | None = None,
    brand: str | None = None,
    color: str | None = None,
    min_price: Annotated[float | None, Query(ge=0)] = None,
    max_price: Annotated[float | None, Query(ge=0)] = None,
    exclude: Exclude = Exclude.PURCHASED,
    diversify: bool = False,
) -> Recommendations:
    """Products for this buyer, from their recent events (weighted by type and recency), with the search's
    filters and a reason per hit; the popular products when the buyer has no usable history."""
    filters = SearchFilters(category=category, brand=brand, color=color, min_price=min_price, max_price=max_price)
    return await svc.stack.recommend.for_buyer(buyer_id, top_k, filters, exclude, diversify)


@router.post("/recommend", responses=documented(401, 403, 413, 422, 503))
async def recommend_session(body: SessionIn, svc: ServiceDep, _: SearchKey) -> Recommendations:
    """The same for an anonymous session's interactions; nothing is stored. No interactions: popular products."""
    return await svc.stack.recommend.for_session(body.interactions, body.top_k, body.filters, body.exclude,
                                                 body.diversify)  # fmt: skip


@router.post("/buyers/encode", responses=documented(401, 403, 413, 422, 503))
async def encode_buyer(body: EncodeIn, svc: ServiceDep, _: SearchKey) -> BuyerVectorOut:
    """The buyer vector (one per space, L2-normalised) of a stored buyer or of given interactions."""
    rec = svc.stack.recommend
    if body.buyer_id is not None:
        buyer, _history = await rec.buyer(body.buyer_id)
    else:
        buyer = await rec.encode(body.interactions or [])
    vectors = {m.value: v.tolist() for m, v in buyer.spaces.items()} if buyer else {}
    return BuyerVectorOut(buyer_id=body.buyer_id, events_used=buyer.events_used if buyer else 0,
                          model=svc.stack.encoder.info.model, vectors=vectors)  # fmt: skip
