"""Request and response bodies of the recommendation routes (``/v1/events``, ``/v1/buyers/...``,
``/v1/recommend``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.recommend.events import BuyerId, Interaction, ShopperEvent
from pipeline.schemas import Product, SearchFilters

_STRICT = ConfigDict(extra="forbid")


class Exclude(StrEnum):
    PURCHASED = "purchased"  # what the buyer bought (the default)
    SEEN = "seen"  # anything the buyer had an event with
    NONE = "none"


class EventsIn(BaseModel):
    model_config = _STRICT
    events: list[ShopperEvent] = Field(min_length=1, max_length=1000)


class EventError(BaseModel):
    index: int  # position in the request's list
    message: str


class EventsResult(BaseModel):
    accepted: int = Field(description="Stored now")
    duplicates: int = Field(description="Sent before (same event_id): stored once")
    unknown_products: int = Field(description="Naming no product in the catalog: ignored")
    unknown_queries: int = Field(
        default=0,
        description="Clicks naming a query_id no answer had (or, with a search key, a product it did not show)",
    )
    rejected: list[EventError] = Field(default_factory=list, description="Refused (e.g. stamped in the future)")


class _Options(BaseModel):
    model_config = _STRICT
    top_k: int | None = Field(default=None, ge=1, le=1000)
    filters: SearchFilters | None = None
    exclude: Exclude = Exclude.PURCHASED
    diversify: bool = Field(default=False, description="Maximal marginal relevance over the candidates")


class SessionIn(_Options):
    interactions: list[Interaction] = Field(default_factory=list, max_length=10_000)


class EncodeIn(BaseModel):
    model_config = _STRICT
    buyer_id: BuyerId | None = None
    interactions: list[Interaction] | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _one(self) -> EncodeIn:
        if (self.buyer_id is None) == (self.interactions is None):
            raise ValueError("give exactly one of buyer_id or interactions")
        return self


class BuyerVectorOut(BaseModel):
    buyer_id: str | None
    events_used: int
    model: str
    vectors: dict[str, list[float]] = Field(description="One L2-normalised vector per space; empty: no history")


class RecommendHit(BaseModel):
    id: str
    score: float = Field(description="The fused cosine of the buyer vector (or popularity) the order follows")
    reason: str
    because: str | None = Field(default=None, description="The product of the buyer's history it is most like")
    product: Product | None


class Recommendations(BaseModel):
    buyer_id: str | None
    strategy: Literal["buyer", "popular"] = Field(description="popular: no usable history (a fallback)")
    events_used: int
    hits: list[RecommendHit]
    model: str
    took_ms: float
    timings_ms: dict[str, float] = Field(default_factory=dict)
