"""One kind of writer at a time per vector collection, across processes: product writes share, a re-index excludes.

Without it an ingest during a re-index lands in the collection about to be retired (and is marked indexed, so
it is later skipped as unchanged), and a delete during a re-index comes back with the new collection. The
lock is a lease document per collection in MongoDB, the store every writer already needs:

    {_id: <collection>, writers: [{token, expires}], reindex: {token, expires} | null}

A writer joins ``writers`` only while no live re-index holds the document; a re-index takes ``reindex`` (new
writers then wait) and waits for the writers already in to finish. Holders renew their lease while they work,
so a process that dies holding it blocks the others for one lease at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from pipeline import aio
from pipeline.errors import Busy, StoreUnavailable


def _now() -> datetime:
    return datetime.now(UTC)


class WriteLock:
    def __init__(self, locks: AsyncCollection[dict[str, Any]], name: str, lease_s: float = 30.0) -> None:
        self._locks = locks
        self.name = name
        self._lease = timedelta(seconds=lease_s)
        self._poll_s = 0.05

    def _free(self, now: datetime) -> dict[str, Any]:
        """The document, when no live re-index holds it."""
        return {"_id": self.name, "$or": [{"reindex": None}, {"reindex.expires": {"$lt": now}}]}

    async def _take(self, update: dict[str, Any]) -> dict[str, Any] | None:
        """The document once taken (None: a live re-index holds it)."""
        try:
            doc = await self._locks.find_one_and_update(self._free(_now()), update, {"generation": 1}, upsert=True,
                                                        return_document=ReturnDocument.AFTER)  # fmt: skip
        except DuplicateKeyError:  # the document exists and a live re-index holds it
            return None
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: write lock on {self.name!r}: {exc}") from exc
        return doc or {}

    @contextlib.asynccontextmanager
    async def shared(self, wait_s: float) -> AsyncIterator[str | None]:
        """Held by product writes (ingest, upsert, delete); waits up to ``wait_s`` for a running re-index,
        then raises Busy. Yields the model generation writes go to (what the last switch recorded; None before
        any), so a process that has not yet heard of a switch made elsewhere follows it before it writes."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while (doc := await self._take({"$push": {"writers": {"token": token, "expires": _now() + self._lease}}})
               ) is None:  # fmt: skip
            if time.monotonic() >= deadline:
                raise Busy(
                    f"a re-index of {self.name!r} is running; writes wait for it up to {wait_s:.0f} s "
                    "(PIPELINE__INGEST__WRITE_WAIT_S): retry when it is done"
                )
            await asyncio.sleep(self._poll_s)
        try:
            async with self._renewing({"writers.token": token}, "writers.$.expires"):
                yield doc.get("generation")
        finally:
            await self._release({"$pull": {"writers": {"token": token}}})

    @contextlib.asynccontextmanager
    async def exclusive(self, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Held by a re-index (or a switch of generation): new writers wait from now on; returns once the writers
        already in are done. Another exclusive holder: waits up to ``wait_s``, then raises Busy."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        attempt = 0
        # a duplicate key can also mean two holders created the document at once: a few tries in any case
        while await self._take({"$set": {"reindex": {"token": token, "expires": _now() + self._lease}}}) is None:
            attempt += 1
            if attempt >= 3 and time.monotonic() >= deadline:
                raise Busy(f"a re-index of {self.name!r} is already running")
            await asyncio.sleep(min(self._poll_s * attempt, 1.0))
        try:
            async with self._renewing({"reindex.token": token}, "reindex.expires"):
                await self._drain()
                yield
        finally:
            await self._release({"$set": {"reindex": None}}, {"reindex.token": token})

    async def set_generation(self, generation: str) -> None:
        """Record, while holding it exclusively, the generation writes go to from now on (a switch)."""
        try:
            await self._locks.update_one({"_id": self.name}, {"$set": {"generation": generation}})
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: write lock on {self.name!r}: {exc}") from exc

    async def _drain(self) -> None:
        while True:
            try:
                now = _now()
                await self._locks.update_one({"_id": self.name}, {"$pull": {"writers": {"expires": {"$lt": now}}}})
                doc = await self._locks.find_one({"_id": self.name}, {"writers": 1})
            except PyMongoError as exc:
                raise StoreUnavailable(f"MongoDB: write lock on {self.name!r}: {exc}") from exc
            if not (doc or {}).get("writers"):
                return
            await asyncio.sleep(self._poll_s)

    @contextlib.asynccontextmanager
    async def _renewing(self, holder: dict[str, Any], field: str) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self._lease.total_seconds() / 3)
                try:  # a missed renewal is retried; the lease outlives two
                    await self._locks.update_one({"_id": self.name, **holder}, {"$set": {field: _now() + self._lease}})
                except PyMongoError as exc:
                    if aio.cancelling():
                        raise asyncio.CancelledError from exc

        task = asyncio.create_task(renew(), name=f"lease {self.name}")
        try:
            yield
        finally:
            await aio.stop(task)

    async def _release(self, update: dict[str, Any], holder: dict[str, Any] | None = None) -> None:
        # Best effort: a release that cannot reach MongoDB leaves a lease that expires by itself.
        with contextlib.suppress(PyMongoError):
            await self._locks.update_one({"_id": self.name, **(holder or {})}, update)
