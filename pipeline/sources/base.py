"""What every catalog source shares: its spec (where the products live and how their fields are named), the
row it yields, and turning one source record into a validated Product.

A record's columns (fields) are product fields, or are named to them through ``mapping``; anything else is kept
as an attribute, as a catalog file's extra fields are (``pipeline.catalog.normalize``). The ``updated_at``
column is bookkeeping: it orders an incremental read and is not stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.catalog import is_url, normalize, resolve_image
from pipeline.config import SourceSettings
from pipeline.errors import InvalidInput
from pipeline.schemas import Product, describe_errors


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What the products it supplies are recorded under, and its sync watermark kept under (a sync deletes only
    # products of its own name). Unset: derived from where it reads and how, so editing the query makes it a
    # new source; name it to keep its products and watermark across such edits.
    name: str | None = Field(default=None, min_length=1, max_length=100)

    # Product field -> the source's column (field) name where they differ, e.g. {"id": "sku", "name": "title"}.
    mapping: dict[str, str] = {}
    # A column (field) holding each row's last change: a ``sync`` then reads only rows changed since the last one.
    updated_at: str | None = None
    # Relative image references are joined to this folder or http(s) URL (unset: they are refused).
    image_base: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)


class SqlSpec(_Spec):
    type: Literal["sql"] = "sql"
    url: str = Field(description="A SQLAlchemy URL: postgresql://user@host/db, mysql://..., sqlite:///catalog.db")
    query: str = Field(min_length=1, description="A SELECT returning one row per product")
    by_id_query: str | None = Field(default=None, description="One product by its id (a named parameter :id)")


class MongoSpec(_Spec):
    type: Literal["mongo"] = "mongo"
    url: str = Field(description="A mongodb:// URI")
    database: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    filter: dict[str, Any] = Field(default={}, description="Which documents are products (a MongoDB query)")


SourceSpec = Annotated[SqlSpec | MongoSpec, Field(discriminator="type")]
_SPEC: TypeAdapter[SqlSpec | MongoSpec] = TypeAdapter(SourceSpec)


def spec_from_settings(settings: SourceSettings) -> SqlSpec | MongoSpec:
    """The configured source (``PIPELINE__SOURCE__...``); raises InvalidInput when there is none or it is partial."""
    if settings.type is None:
        raise InvalidInput("no catalog source is configured (set PIPELINE__SOURCE__TYPE, URL and QUERY or COLLECTION)")
    fields = (SqlSpec if settings.type == "sql" else MongoSpec).model_fields
    given = settings.model_dump(exclude_none=True)
    given["url"] = settings.url.get_secret_value() if settings.url else None
    try:
        return _SPEC.validate_python({k: v for k, v in given.items() if k in fields})
    except ValidationError as exc:
        raise InvalidInput(f"the configured source (PIPELINE__SOURCE__*): {describe_errors(exc.errors())}") from None


def hide_password(url: str) -> str:
    """A URL fit to show and log: its password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def describe(spec: SqlSpec | MongoSpec) -> str:
    """The source in a message: where it is, never its password."""
    if isinstance(spec, SqlSpec):
        return f"SQL source {hide_password(spec.url)}"
    return f"MongoDB source {hide_password(spec.url)} {spec.database}.{spec.collection}"


def source_key(spec: SqlSpec | MongoSpec) -> str:
    """A stable name for a source: products record it (what a sync may delete), the sync state is kept under it.
    Its ``name`` when it has one; else two specs reading the same rows the same way have the same key, and a
    password change does not change it."""
    if spec.name:
        return f"{spec.type}:{spec.name}"
    if isinstance(spec, SqlSpec):
        what = spec.query.strip().rstrip(";").strip()
        where = hide_password(spec.url)
    else:
        what = json.dumps(spec.filter, sort_keys=True, default=str)
        where = f"{hide_password(spec.url)}/{spec.database}.{spec.collection}"
    digest = hashlib.sha256(json.dumps([where, what, spec.mapping], sort_keys=True).encode()).hexdigest()[:12]
    return f"{spec.type}:{digest}"


@dataclass(frozen=True)
class SourceRow:
    position: int  # 1-based, in the order the source returned the rows
    key: str | None  # the product id as the source holds it (None when the row has none)
    product: Product | None
    error: str | None = None
    changed: Any = None  # the row's updated_at value, when the source has one


def _plain(value: Any) -> Any:
    """A driver's value as a product field or attribute takes it."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return None  # binary columns (a thumbnail blob) are not metadata
    if type(value).__name__ == "ObjectId":
        return str(value)
    return value


class Source(ABC):
    """A catalog source read synchronously (drivers block): :class:`pipeline.sources.reader.SourceReader` runs
    it on a thread of its own. Drivers' errors come out as SourceError with the driver's message."""

    def __init__(self, spec: SqlSpec | MongoSpec, strict: bool = False) -> None:
        self.spec, self.strict = spec, strict
        self.key = source_key(spec)
        self.id_column = spec.mapping.get("id", "id")
        self._fields = {column: field for field, column in spec.mapping.items()}  # column -> product field

    @abstractmethod
    def rows(self, since: Any = None) -> Iterator[SourceRow]:
        """Every product row (with ``since``, those changed at or after it), in a stable order."""

    @abstractmethod
    def ids(self) -> Iterator[str]:
        """The id of every product the source holds now."""

    @abstractmethod
    def by_id(self, product_id: str) -> SourceRow | None:
        """One product by id, None when the source has no such row."""

    @abstractmethod
    def count(self, since: Any = None) -> int | None:
        """How many rows :meth:`rows` will yield (None when counting is not cheap)."""

    def close(self) -> None:  # noqa: B027 - a source without resources has nothing to close
        pass

    def to_row(self, position: int, record: Mapping[str, Any]) -> SourceRow:
        """One record → a validated product (or the reason it is not one)."""
        changed = record.get(self.spec.updated_at) if self.spec.updated_at else None
        raw: dict[str, Any] = {}
        for column, value in record.items():
            if column == self.spec.updated_at and column not in self._fields:
                continue
            plain = _plain(value)
            if plain is not None:
                raw[self._fields.get(column, column)] = plain
        key = None if raw.get("id") is None else str(raw["id"])
        if key is not None:
            raw["id"] = key
        try:
            product = Product.model_validate(normalize(raw, self.strict))
            product = product.model_copy(update={"images": [self._image(ref) for ref in product.images]})
        except ValidationError as exc:
            return SourceRow(position, key, None, describe_errors(exc.errors(), whole="row", limit=3), changed)
        except (InvalidInput, ValueError) as exc:
            return SourceRow(position, key, None, str(exc), changed)
        return SourceRow(position, key, product, None, changed)

    def _image(self, ref: str) -> str:
        base = self.spec.image_base
        if is_url(ref) or Path(ref).expanduser().is_absolute():
            return resolve_image(ref, Path("/"))
        if base is None:
            raise InvalidInput(f"image {ref!r}: a relative path (set the source's image_base to resolve it)")
        if is_url(base):
            return resolve_image(ref, Path("/"), base.rstrip("/") + "/")
        return resolve_image(ref, Path(base).expanduser().resolve())


def unique(rows: Iterator[SourceRow]) -> Iterator[SourceRow]:
    """Rows with a second occurrence of an id turned into an error row (the first one wins)."""
    seen: dict[str, int] = {}
    for row in rows:
        if row.product is not None:
            first = seen.setdefault(row.product.id, row.position)
            if first != row.position:
                row = SourceRow(row.position, row.key, None, f"duplicate id {row.key!r} (first at row {first})")
        yield row
