"""Typed data that crosses layers: catalog products, filters, hits and search responses."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pipeline.types import Modality

ProductId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
Short = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
AttributeValue = str | int | float | bool | None


MAX_IMAGES = 32  # images per product (each is one point in the index)


class Product(BaseModel):
    """One catalog product. MongoDB holds it under ``_id = id``; Qdrant holds one point per image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ProductId
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=10_000)] = ""
    brand: Short | None = None
    category: Short | None = None
    color: Short | None = None
    price: float | None = Field(default=None, ge=0)
    images: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=MAX_IMAGES
    )
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if any(ord(ch) < 32 for ch in value):
            raise ValueError("id contains control characters")
        return value

    @field_validator("price")
    @classmethod
    def _finite_price(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("price must be a finite number")
        return value

    @field_validator("brand", "category", "color")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    def embedding_text(self) -> str:
        """What the text vector encodes: the product's title, as a shopper would type it (CLIP reads ≤ 77
        tokens), with the category added when the title does not say it. Brand and description stay out:
        unknown brand words and long prose pull the vector away from what people search for."""
        name = self.name
        if self.category and self.category.lower() not in name.lower():
            name = f"{name} {self.category}"
        return name

    def content_hash(self, extra: str = "") -> str:
        """Hash of everything that shapes the vectors (fields, the text recipe's output, and ``extra``: image
        file identities), so a change to any of them re-embeds the product."""
        doc = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256("\0".join((doc, self.embedding_text(), extra)).encode()).hexdigest()[:32]


class SearchFilters(BaseModel):
    """Payload filters; values are matched literally (never interpreted as query operators). An unknown field
    is an error: a typo must never silently widen a query."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: str | None = None
    brand: str | None = None
    color: str | None = None
    min_price: float | None = Field(default=None, ge=0)
    max_price: float | None = Field(default=None, ge=0)

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class QueryKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    PRODUCT = "product"


class Hit(BaseModel):
    product_id: str
    score: float  # the fused score hits are ordered by (PIPELINE__SEARCH__FUSION: weighted cosine by default)
    similarity: float  # best cosine similarity among the product's matching vectors
    matched: Modality  # which stored vector ("image" or "text") matched best
    image_index: int | None = None  # which of the product's images matched, for image matches
    product: Product | None = None  # None when MongoDB could not be read


class SearchResponse(BaseModel):
    kind: QueryKind
    hits: list[Hit]
    metadata_missing: bool = False
    cache_hit: bool | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    model: str = ""
    generation: str = ""  # the model version that answered (its generation: that model + its collection)
    query_id: str = ""  # names this answer in a click event


def describe_errors(errors: Sequence[Mapping[str, Any]], whole: str = "body", limit: int = 5) -> str:
    """Pydantic's validation errors as one line, each naming its field: ``filters.colour: Extra inputs are not
    permitted; top_k: ...``. The leading ``body`` of a request's locations is dropped."""
    parts = []
    for err in errors[:limit]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or whole
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or f"invalid {whole}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one product of an upsert."""

    id: str
    status: Literal["added", "updated", "unchanged", "rejected"]
    error: str | None = None


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    seconds: float = 0.0
    rejected_count: int | None = None  # when ``rejected`` holds only the first reasons (a job keeps 1,000)
    copied: int = 0  # a re-index: of ``updated``, products whose current vectors (image vectors only, when the
    # title tower changed) were copied, not re-embedded

    @property
    def processed(self) -> int:
        return self.added + self.updated + self.unchanged + len(self.rejected)


def jsonable(obj: Any) -> Any:
    """Pydantic models and plain data to JSON-ready structures."""
    return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
