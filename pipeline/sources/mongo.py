"""A MongoDB collection as a catalog source (a shop's own ``product_metadata``, say): the documents a filter
selects, their fields named to product fields through the mapping. A document's id is its ``id`` field (or the
mapped one), else its ``_id``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, MongoClient
from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

from pipeline.errors import InvalidInput, SourceError
from pipeline.sources.base import MongoSpec, Source, SourceRow, describe, unique


class MongoSource(Source):
    spec: MongoSpec

    def __init__(self, spec: MongoSpec, strict: bool = False) -> None:
        super().__init__(spec, strict)
        ms = int(spec.timeout_s * 1000)
        try:
            self.client: MongoClient[dict[str, Any]] = MongoClient(
                spec.url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms, tz_aware=True
            )
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise InvalidInput(f"{describe(spec)}: {exc}") from None
        self.collection = self.client[spec.database][spec.collection]

    def _fail(self, what: str, exc: PyMongoError) -> SourceError:
        return SourceError(f"{describe(self.spec)}: {what} ({str(exc).split(', Timeout:')[0]})")

    def _record(self, doc: dict[str, Any]) -> dict[str, Any]:
        oid = doc.pop("_id", None)
        if doc.get(self.id_column) is None and oid is not None:
            doc[self.id_column] = str(oid)
        return doc

    def rows(self, since: Any = None) -> Iterator[SourceRow]:
        query = dict(self.spec.filter)
        updated = self.spec.updated_at
        if updated and since is not None:
            query[updated] = {"$gte": since}
        order = [(updated, ASCENDING), ("_id", ASCENDING)] if updated else [("_id", ASCENDING)]
        try:
            cursor = self.collection.find(query, batch_size=500).sort(order)
            yield from unique(self.to_row(i, self._record(doc)) for i, doc in enumerate(cursor, start=1))
        except PyMongoError as exc:
            raise self._fail("reading documents failed", exc) from None

    def ids(self) -> Iterator[str]:
        try:
            for doc in self.collection.find(self.spec.filter, {self.id_column: 1}, batch_size=5000):
                yield str(self._record(doc)[self.id_column])
        except PyMongoError as exc:
            raise self._fail("reading ids failed", exc) from None

    def by_id(self, product_id: str) -> SourceRow | None:
        choices: list[dict[str, Any]] = [{self.id_column: product_id}]
        if product_id.lstrip("-").isdigit():  # ids the source holds as numbers travel as text
            choices.append({self.id_column: int(product_id)})
        if ObjectId.is_valid(product_id):  # a document without an id field goes by its _id
            choices.append({"_id": ObjectId(product_id), self.id_column: None})
        try:
            doc = self.collection.find_one({"$and": [self.spec.filter, {"$or": choices}]})
        except PyMongoError as exc:
            raise self._fail("the by-id read failed", exc) from None
        return None if doc is None else self.to_row(1, self._record(doc))

    def count(self, since: Any = None) -> int | None:
        query = dict(self.spec.filter)
        if self.spec.updated_at and since is not None:
            query[self.spec.updated_at] = {"$gte": since}
        try:
            return int(self.collection.count_documents(query))
        except PyMongoError as exc:
            raise self._fail("counting documents failed", exc) from None

    def close(self) -> None:
        self.client.close()
