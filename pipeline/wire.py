"""What travels over HTTP: request and response bodies of the service, shared by the service and its client.

Every request model forbids unknown fields (a typo in a filter must fail, not silently widen a query).
Internal types stay internal: ``WireSearch.of`` / ``to_response`` convert at the edge, so the CLI prints
the same thing whether it ran the stack in-process or asked the service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.schemas import AttributeValue, Hit, Product, QueryKind, SearchFilters, SearchResponse
from pipeline.types import Modality

_STRICT = ConfigDict(extra="forbid")


class _QueryOptions(BaseModel):
    """What every search takes besides the query itself."""

    model_config = _STRICT
    top_k: int | None = Field(default=None, ge=1, le=1000, description="How many products (default 10; the "
                              "service's max applies)")  # fmt: skip
    filters: SearchFilters | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0, description="Least cosine similarity of a hit")


class TextQuery(_QueryOptions):
    text: str = Field(description="A few words, in any case; empty or over the query limit is refused")


class UrlQuery(_QueryOptions):
    url: str = Field(description="An http(s) URL of a photo; private and loopback hosts are refused by default")


class WireHit(BaseModel):
    id: str
    score: float = Field(description="The fused ranking score the order follows")
    similarity: float = Field(description="Best cosine similarity among the product's matching vectors")
    matched: Modality = Field(description="Which stored vector matched best")
    image_index: int | None = None
    product: Product | None = Field(description="The product's metadata; null when MongoDB could not be read")


class WireSearch(BaseModel):
    hits: list[WireHit]
    took_ms: float
    cached: bool | None = Field(description="Query embedding from the cache; null for stored vectors")
    model: str
    generation: str = Field(default="", description="The model version that answered, entirely")
    query_id: str = Field(default="", description="Names this answer in a click event (POST /v1/events)")
    kind: QueryKind
    metadata_missing: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def of(cls, r: SearchResponse) -> WireSearch:
        hits = [WireHit(id=h.product_id, **h.model_dump(exclude={"product_id", "product"}), product=h.product)
                for h in r.hits]  # fmt: skip
        return cls(hits=hits, took_ms=r.timings_ms.get("total", 0.0), cached=r.cache_hit, model=r.model,
                   generation=r.generation, query_id=r.query_id, kind=r.kind,
                   metadata_missing=r.metadata_missing, timings_ms=r.timings_ms)  # fmt: skip

    def to_response(self) -> SearchResponse:
        hits = [Hit(product_id=h.id, **h.model_dump(exclude={"id", "product"}), product=h.product) for h in self.hits]
        return SearchResponse(kind=self.kind, hits=hits, metadata_missing=self.metadata_missing,
                              cache_hit=self.cached, timings_ms=self.timings_ms, model=self.model,
                              generation=self.generation, query_id=self.query_id)  # fmt: skip


class RankRequest(BaseModel):
    model_config = _STRICT
    query: str | None = Field(default=None, description="A text to rank the candidates against")
    query_image_url: str | None = Field(default=None, description="Or a photo's http(s) URL")
    candidates: list[str] = Field(min_length=2, max_length=1000, description="Texts to score, 2 to 1,000")

    @model_validator(mode="after")
    def _one_query(self) -> RankRequest:
        if (self.query is None) == (self.query_image_url is None):
            raise ValueError("give exactly one of query or query_image_url")
        return self


class Ranked(BaseModel):
    index: int = Field(description="Position of the candidate in the request")
    candidate: str
    similarity: float


class RankResponse(BaseModel):
    ranked: list[Ranked]
    took_ms: float
    model: str


class ProductIn(BaseModel):
    """A catalog row. ``images``: http(s) URLs or ``data:`` URIs (base64); file paths only from the service's
    own machine (the local token)."""

    model_config = _STRICT
    id: str | None = Field(default=None, description="Optional in PUT (the path names it); required in a batch")
    name: str
    description: str = ""
    brand: str | None = None
    category: str | None = None
    color: str | None = None
    price: float | None = None
    images: list[str] = Field(min_length=1, max_length=32)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class Batch(BaseModel):
    model_config = _STRICT
    products: list[ProductIn] = Field(min_length=1, max_length=1000)


class RowResult(BaseModel):
    id: str
    status: Literal["added", "updated", "unchanged", "rejected"]
    error: str | None = None


class BatchResult(BaseModel):
    results: list[RowResult]
    added: int
    updated: int
    unchanged: int
    rejected: int


class ProductOut(BaseModel):
    product: Product
    indexed: bool = Field(description="Its vectors, made by the serving model, are in the index")


class Deleted(BaseModel):
    id: str
    deleted: bool


class IdPage(BaseModel):
    ids: list[str]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last")


class KeyIn(BaseModel):
    model_config = _STRICT
    name: str
    scope: Literal["search", "write", "admin"]


class KeyOut(BaseModel):
    """A key's record (never the key): built from the store's ``ApiKey`` or read back from the wire."""

    model_config = ConfigDict(from_attributes=True)
    name: str
    scope: str
    created: datetime
    hint: str
    revoked: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown once, never stored")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
