"""API keys in MongoDB: stored as SHA-256 digests (the key itself is shown once, at creation), with a scope.

A key is 32 random bytes, so a fast digest is enough (no password stretching needed): the database never
holds a usable key, and a lookup is one indexed ``find_one`` by digest. Revocation keeps the record (who,
when) and frees the name for a new key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from pipeline.errors import Conflict, InvalidInput, NotFound, StoreUnavailable

PREFIX = "psk_"


class Scope(StrEnum):
    SEARCH = "search"  # search, similar, rank, read products
    WRITE = "write"  # also upsert and delete products
    ADMIN = "admin"  # also keys, stats of every store, development routes

    def covers(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: Scope
    created: datetime
    hint: str  # the first characters of the key, to tell keys apart in a listing
    revoked: datetime | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _of(doc: dict[str, Any]) -> ApiKey:
    return ApiKey(doc["name"], Scope(doc["scope"]), doc["created"], doc["hint"], doc.get("revoked"))


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 64 or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise InvalidInput(f"key name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    return name


class KeyStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._keys = collection

    async def ensure_indexes(self) -> None:
        try:  # one live key per name; revoked records keep theirs
            await self._keys.create_index([("name", ASCENDING)], unique=True, partialFilterExpression={"active": True})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def create(self, name: str, scope: Scope) -> tuple[ApiKey, str]:
        """A new key: returns its record and the key itself, which is never stored and cannot be shown again.

        Raises Conflict when a live key already has the name."""
        name = check_name(name)
        key = PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(name, Scope(scope), datetime.now(UTC), key[: len(PREFIX) + 4])
        doc = {"_id": digest(key), "name": name, "scope": str(record.scope), "created": record.created,
               "hint": record.hint, "active": True}  # fmt: skip
        try:
            await self._keys.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"a key named {name!r} exists; revoke it first or pick another name") from None
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return record, key

    async def lookup(self, key: str) -> ApiKey | None:
        """The live key record for a presented key, or None. Raises StoreUnavailable."""
        try:
            doc = await self._keys.find_one({"_id": digest(key), "active": True})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return _of(doc) if doc else None

    async def list(self, include_revoked: bool = False) -> list[ApiKey]:
        query: dict[str, Any] = {} if include_revoked else {"active": True}
        try:
            docs = await self._keys.find(query).sort("created", ASCENDING).to_list(None)
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        return [_of(d) for d in docs]

    async def revoke(self, name: str) -> tuple[str, ApiKey]:
        """Revoke the live key with this name; returns its digest and its record. Raises NotFound."""
        try:
            doc = await self._keys.find_one_and_update(
                {"name": name, "active": True},
                {"$set": {"active": False, "revoked": datetime.now(UTC)}},
                return_document=ReturnDocument.AFTER,
            )
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
        if doc is None:
            raise NotFound(f"no live key named {name!r}")
        return str(doc["_id"]), _of(doc)

    async def count(self) -> int:
        try:
            return await self._keys.count_documents({"active": True})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc
