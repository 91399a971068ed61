"""Catalog sources besides files (``pipeline.catalog`` reads JSONL, CSV and JSON arrays): a SQL database through
SQLAlchemy, a MongoDB collection. ``open_source(spec)`` gives an async reader over one of them."""

from pipeline.sources.base import MongoSpec, SourceRow, SourceSpec, SqlSpec, describe, source_key, spec_from_settings
from pipeline.sources.reader import SourceReader, open_source

__all__ = [
    "MongoSpec",
    "SourceReader",
    "SourceRow",
    "SourceSpec",
    "SqlSpec",
    "describe",
    "open_source",
    "source_key",
    "spec_from_settings",
]
