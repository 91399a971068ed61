"""Reading catalogs: JSONL, CSV or JSON-array rows → validated Products, each bad row reported with its line
(or, in a JSON array, its position).

Rows are taken as catalogs write them: other names for our fields (``image_path``, ``image_url`` and ``image``
for ``images``, ``title`` for ``name``), one image or several, and fields the schema does not know (``SKU``,
``text``) kept as attributes, unless the caller asks for strictness. Image references are resolved here: a
relative path against the catalog's folder, an absolute path as is, an http(s) URL kept as a URL. Any other
scheme is refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from pydantic import ValidationError

from pipeline.errors import InvalidInput
from pipeline.schemas import Product, describe_errors

PRODUCT_FIELDS = frozenset(Product.model_fields)
# Other names catalogs give our fields; the field itself wins when a row has both.
ALIASES = {"image_path": "images", "image_url": "images", "image": "images", "image_urls": "images", "title": "name"}


@dataclass(frozen=True)
class Row:
    line: int
    product: Product | None
    error: str | None = None


def is_url(ref: str) -> bool:
    return urlparse(ref).scheme in ("http", "https")


def resolve_image(ref: str, base: Path, base_url: str | None = None) -> str:
    """An image reference as stored: absolute path or http(s) URL. Raises InvalidInput for other schemes.
    In a catalog read from ``base_url`` every reference is a URL: relative ones are joined to it, and no
    reference can name a file on this machine."""
    scheme = urlparse(ref).scheme
    if scheme in ("http", "https"):
        return ref
    if base_url is not None:
        if scheme:
            raise InvalidInput(f"image {ref!r}: a catalog read from a URL names its images by http(s) URL")
        return urljoin(base_url, ref)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidInput(f"image {ref!r}: only file paths and http(s) URLs are supported")
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _image_list(value: Any) -> list[Any]:
    """One reference, several (a list, a JSON array in a string, or ``a.jpg|b.jpg``), or none."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return [p for p in (s.strip() for s in text.split("|")) if p]
    return list(value) if isinstance(value, list | tuple) else [value]


def _attribute(value: Any) -> Any:
    """Scalars as they are; anything nested as its JSON text (kept, not refused)."""
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value, default=str)


def normalize(raw: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
    """A source's row → Product fields: aliases mapped, images as a list, unknown fields kept as attributes
    (with ``strict``, refused: raises ValueError naming them)."""
    attributes = raw.get("attributes") or {}
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    if not isinstance(attributes, dict):
        raise ValueError("attributes must be a JSON object")
    row: dict[str, Any] = {k: v for k, v in raw.items() if k in PRODUCT_FIELDS and k != "attributes"}
    unknown = []
    for key, value in raw.items():
        if key in PRODUCT_FIELDS or not key:
            continue
        field = ALIASES.get(key)
        if field is not None and (field == "images" or field not in row):
            row[field] = _image_list(row.get(field)) + _image_list(value) if field == "images" else value
        elif strict:
            unknown.append(key)
        elif value not in (None, ""):
            attributes = {**attributes, key: _attribute(value)}
    if unknown:
        raise ValueError(f"unknown fields {', '.join(map(repr, unknown))} (the catalog is read strictly)")
    if "images" in row:
        row["images"] = list(dict.fromkeys(_image_list(row["images"])))  # one image named twice is one image
    if attributes:
        row["attributes"] = attributes
    return row


def _json_array(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from exc
    if not isinstance(items, list):
        raise InvalidInput(f"{path}: a JSON catalog is an array of product objects (or one object per line)")
    for position, value in enumerate(items, start=1):
        yield (position, value, None) if isinstance(value, dict) else (position, None, "a row must be a JSON object")


def is_json_array(path: Path) -> bool:
    """Whether a .json catalog is one array (else it is read as one object per line)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _raw_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    suffix = path.suffix.lower()
    if suffix == ".json" and is_json_array(path):
        yield from _json_array(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
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
                yield line_no, {k: v for k, v in raw.items() if v not in (None, "")}, None
    else:
        raise InvalidInput(f"{path}: unknown catalog format {suffix or '(none)'}; use .jsonl, .json or .csv")


def count_rows(path: Path) -> int | None:
    """How many rows a catalog file holds, cheaply (lines); None for a JSON array or an unreadable file."""
    try:
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
    except OSError:
        return None
    try:
        array = path.suffix.lower() == ".json" and is_json_array(path)
    except (OSError, UnicodeDecodeError):
        return None  # reading it will say what is wrong
    if array:
        return None  # a JSON array: its lines are not its rows
    return max(lines - 1, 0) if path.suffix.lower() == ".csv" else lines


def read_catalog(path: Path, strict: bool = False, base_url: str | None = None) -> Iterator[Row]:
    """Rows of a catalog file in order; invalid rows carry an error and no product. Raises InvalidInput
    when the file itself cannot be read. ``strict`` refuses rows with fields the schema does not know;
    ``base_url``: the file was downloaded from there (see :func:`resolve_image`)."""
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
                product = Product.model_validate(normalize(raw, strict))
                images = [resolve_image(i, base, base_url) for i in product.images]
                product = product.model_copy(update={"images": images})
            except ValidationError as exc:
                yield Row(line_no, None, describe_errors(exc.errors(), whole="row", limit=3))
                continue
            except (InvalidInput, ValueError) as exc:  # ValueError: normalize's (JSON in a field, strictness)
                yield Row(line_no, None, str(exc))
                continue
            if product.id in seen:
                yield Row(line_no, None, f"duplicate id {product.id!r} (first at line {seen[product.id]})")
                continue
            seen[product.id] = line_no
            yield Row(line_no, product)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason})") from exc
