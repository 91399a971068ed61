"""Sources read from async code: every driver call of one source runs on one thread of its own (connections
and cursors stay on the thread that made them; the event loop never blocks on a database)."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pipeline.sources.base import MongoSpec, Source, SourceRow, SqlSpec

T = TypeVar("T")
_DONE = object()


def make_source(spec: SqlSpec | MongoSpec, strict: bool = False) -> Source:
    if isinstance(spec, SqlSpec):
        from pipeline.sources.sql import SqlSource

        return SqlSource(spec, strict)
    from pipeline.sources.mongo import MongoSource

    return MongoSource(spec, strict)


class SourceReader:
    def __init__(self, source: Source, pool: ThreadPoolExecutor) -> None:
        self.source, self._pool = source, pool
        self.key, self.spec = source.key, source.spec

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def _drain(self, it: Iterator[T], size: int) -> AsyncIterator[list[T]]:
        def take() -> list[T]:
            return list(itertools.islice(it, size))

        try:
            while chunk := await self._call(take):
                yield chunk
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # a generator left midway releases its cursor and connection, on its thread
                await asyncio.shield(self._call(close))

    def batches(self, size: int, since: Any = None) -> AsyncIterator[list[SourceRow]]:
        """Rows ``size`` at a time (those changed at or after ``since``)."""
        return self._drain(self.source.rows(since), size)

    async def ids(self) -> set[str]:
        found: set[str] = set()
        async for chunk in self._drain(self.source.ids(), 10_000):
            found.update(chunk)
        return found

    async def by_id(self, product_id: str) -> SourceRow | None:
        return await self._call(self.source.by_id, product_id)

    async def count(self, since: Any = None) -> int | None:
        return await self._call(self.source.count, since)


@asynccontextmanager
async def open_source(spec: SqlSpec | MongoSpec, strict: bool = False) -> AsyncIterator[SourceReader]:
    """A reader of the source ``spec`` names; raises InvalidInput for a spec that cannot work (a bad URL, a
    missing driver), SourceError (from its reads) for a source that is down or refuses the query."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="source")
    try:
        source = await asyncio.get_running_loop().run_in_executor(pool, make_source, spec, strict)
        try:
            yield SourceReader(source, pool)
        finally:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(pool, source.close))
    finally:
        pool.shutdown(wait=False)
