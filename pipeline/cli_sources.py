"""The CLI's catalog-source options (``ingest`` and ``jobs submit``): a SQL database or a MongoDB collection
named on the command line, turned into a job's ``source`` parameter."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipeline.errors import InvalidInput

SqlUrl = Annotated[
    str | None,
    typer.Option("--sql-url", help="A SQL source: postgresql://user@host/db, mysql://..., sqlite:///catalog.db"),
]
Query = Annotated[str | None, typer.Option(help="SQL source: a SELECT returning one row per product")]
ByIdQuery = Annotated[str | None, typer.Option(help="SQL source: one product by id (uses :id)")]
MongoUrl = Annotated[str | None, typer.Option("--mongo-url", help="A MongoDB source: mongodb://host/")]
Database = Annotated[str | None, typer.Option(help="MongoDB source: its database")]
Collection = Annotated[str | None, typer.Option(help="MongoDB source: its collection")]
Filter = Annotated[str | None, typer.Option("--filter", help="MongoDB source: which documents (JSON query)")]
Mapping = Annotated[
    list[str] | None, typer.Option("--map", help="FIELD=COLUMN where the source names a product field otherwise")
]
UpdatedAt = Annotated[str | None, typer.Option(help="The source's last-change column, for incremental syncs")]
SourceName = Annotated[
    str | None, typer.Option("--source-name", help="Keep its products and sync state under this name across edits")
]
ImageBase = Annotated[str | None, typer.Option(help="A folder or URL that relative image paths are joined to")]


def source_param(
    sql_url: str | None,
    query: str | None,
    by_id_query: str | None,
    mongo_url: str | None,
    database: str | None,
    collection: str | None,
    filter_json: str | None,
    mapping: list[str] | None,
    updated_at: str | None,
    image_base: str | None,
    name: str | None = None,
) -> dict[str, Any] | None:
    """A job's ``source`` parameter from the options (None when no source was named)."""
    if sql_url and mongo_url:
        raise InvalidInput("name one source: --sql-url or --mongo-url")
    common: dict[str, Any] = {"mapping": _mapping(mapping or []), "updated_at": updated_at, "image_base": image_base,
                              "name": name}  # fmt: skip
    if sql_url:
        if not query:
            raise InvalidInput("--sql-url needs --query (a SELECT returning one row per product)")
        return {"type": "sql", "url": sql_url, "query": query, "by_id_query": by_id_query, **common}
    if mongo_url:
        if not (database and collection):
            raise InvalidInput("--mongo-url needs --database and --collection")
        try:
            found = json.loads(filter_json) if filter_json else {}
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--filter: not JSON ({exc.msg})") from None
        if not isinstance(found, dict):
            raise InvalidInput("--filter: a JSON object (a MongoDB query)")
        return {"type": "mongo", "url": mongo_url, "database": database, "collection": collection,
                "filter": found, **common}  # fmt: skip
    if query or by_id_query or database or collection or filter_json or mapping or updated_at or image_base or name:
        raise InvalidInput("source options need --sql-url or --mongo-url")
    return None


def _mapping(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise InvalidInput(f"--map {pair!r}: write FIELD=COLUMN, e.g. --map name=title")
        found[field.strip()] = column.strip()
    return found
