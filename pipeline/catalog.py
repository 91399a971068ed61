"""Reading catalogs: JSONL or CSV rows → validated Products, each bad row reported with its line number.

Image references are resolved here: a relative path against the catalog's folder, an absolute path as is,
an http(s) URL kept as a URL. Any other scheme is refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from pipeline.errors import InvalidInput
from pipeline.schemas import Product, describe_errors

_CSV_FIELDS = {"id", "name", "description", "brand", "category", "color", "price", "images", "attributes"}


@dataclass(frozen=True)
class Row:
    line: int
    product: Product | None
    error: str | None = None


def is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


def resolve_image(ref: str, base: Path) -> str:
    """An image reference as stored: absolute path or http(s) URL. Raises InvalidInput for other schemes."""
    scheme = urlparse(ref).scheme
    if scheme in ("http", "https"):
        return ref
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidInput(f"image {ref!r}: only file paths and http(s) URLs are supported")
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _csv_row(raw: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {k: v for k, v in raw.items() if k in _CSV_FIELDS and v not in (None, "")}
    if "images" in row:
        row["images"] = [p for p in (s.strip() for s in row["images"].split("|")) if p]
    attributes = json.loads(row.pop("attributes")) if "attributes" in row else {}
    if not isinstance(attributes, dict):
        raise ValueError("attributes must be a JSON object")
    attributes.update({k: v for k, v in raw.items() if k and k not in _CSV_FIELDS and v not in (None, "")})
    if attributes:
        row["attributes"] = attributes
    return row


def _raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, None, f"invalid JSON ({exc.msg})"
                    continue
                if isinstance(value, dict):
                    yield line_no, value, None
                else:
                    yield line_no, None, "a row must be a JSON object"
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise InvalidInput(f"{path}: a CSV catalog needs a header row with at least id, name, images")
            for raw in reader:
                line_no = reader.line_num
                if None in raw:
                    yield line_no, None, "more fields than the header has"
                    continue
                try:
                    yield line_no, _csv_row(raw), None
                except (ValueError, json.JSONDecodeError) as exc:
                    yield line_no, None, str(exc)
    else:
        raise InvalidInput(f"{path}: unknown catalog format {suffix or '(none)'}; use .jsonl or .csv")


def read_catalog(path: Path) -> Iterator[Row]:
    """Rows of a catalog file in order; invalid rows carry an error and no product. Raises InvalidInput
    when the file itself cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such catalog file")
    base = path.parent.resolve()
    seen: dict[str, int] = {}
    try:
        for line_no, raw, error in _raw_rows(path):
            if raw is None:
                yield Row(line_no, None, error)
                continue
            try:
                product = Product.model_validate(raw)
                product = product.model_copy(update={"images": [resolve_image(i, base) for i in product.images]})
            except ValidationError as exc:
                yield Row(line_no, None, describe_errors(exc.errors(), whole="row", limit=3))
                continue
            except InvalidInput as exc:
                yield Row(line_no, None, str(exc))
                continue
            if product.id in seen:
                yield Row(line_no, None, f"duplicate id {product.id!r} (first at line {seen[product.id]})")
                continue
            seen[product.id] = line_no
            yield Row(line_no, product)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason})") from exc
