"""Jobs over a catalog source (a SQL database, a MongoDB collection): ``ingest`` reads every row, ``sync`` the
rows changed since the last sync (all of them when the source has no ``updated_at`` column, or with ``full``),
and deletes the products the source no longer has when asked.

Rows stream in batches; each batch is written whole before the job reports it. The products a source writes
record its key, so a sync deletes only what that source supplied, never a product from a file or the API.

Resuming. A source with ``updated_at`` is read in (updated_at, id) order and the checkpoint keeps the last
``updated_at`` reached and the counts from before the rows sharing it: a resume reads again from that value,
the rows it re-reads that the job already wrote cost a state read and count as they did the first time. A
source without one is read in id order and resumed by skipping the rows already done (a row added meanwhile
before that point is picked up by the next sync, which reads everything again).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, Literal

from pipeline.errors import InvalidInput
from pipeline.jobs.context import JobContext
from pipeline.jobs.model import RowError, SyncParams
from pipeline.schemas import Outcome, Product
from pipeline.sources import MongoSpec, SourceReader, SourceRow, SqlSpec, describe, open_source, spec_from_settings
from pipeline.stores.sync_state import SyncStates, dump_mark, later, load_mark

_COUNTS = ("added", "updated", "unchanged", "rejected")
# A sync asked to delete what its source no longer has is refused when the source returned no rows at all: an
# empty answer is far more often a wrong query or an emptied view than a closed shop.
_EMPTY_SOURCE = "the source returned no products; refusing to delete all {n} it supplied (a wrong query?)"


def _spec(ctx: JobContext, given: SqlSpec | MongoSpec | Literal["configured"] | None) -> SqlSpec | MongoSpec:
    if given is None or given == "configured":
        return spec_from_settings(ctx.stack.settings.source)
    return given


async def run_source_ingest(ctx: JobContext, given: SqlSpec | MongoSpec | Literal["configured"]) -> dict[str, Any]:
    async with open_source(_spec(ctx, given), ctx.stack.settings.ingest.strict_fields) as reader:
        counts, _ = await _read(ctx, reader, None)
    return counts


async def run_sync(ctx: JobContext, p: SyncParams) -> dict[str, Any]:
    spec = _spec(ctx, p.source)
    states = SyncStates(ctx.stack.mongo.sync_state)
    async with open_source(spec, ctx.stack.settings.ingest.strict_fields) as reader:
        checkpoint = await ctx.store.checkpoint(ctx.job.id)
        if "since" in checkpoint:
            since = load_mark(checkpoint["since"])
        else:
            since = None if (p.full or not spec.updated_at) else await states.watermark(reader.key)
            await ctx.store.save_checkpoint(ctx.job.id, {"since": dump_mark(since)})
        counts, high = await _read(ctx, reader, since)
        if p.delete_missing:
            counts["deleted"] = await _delete_missing(ctx, reader, counts)
        watermark = later(since, high)
        await states.save(reader.key, watermark, ctx.job.id, describe(spec))
    shown = {"since": None if since is None else str(since), "watermark": None if watermark is None else str(watermark)}
    return {**counts, **shown}


async def _read(ctx: JobContext, reader: SourceReader, since: Any) -> tuple[dict[str, int], Any]:
    """Ingest the rows changed at or after ``since`` (all for None), batch by batch; returns the counts and the
    largest ``updated_at`` read."""
    checkpoint = await ctx.store.checkpoint(ctx.job.id)
    incremental = reader.spec.updated_at is not None
    start = since
    if incremental and "mark" in checkpoint:  # resume from the last updated_at reached, with the counts before it
        start = load_mark(checkpoint["mark"])
        counts: dict[str, int] = dict(checkpoint["base_counts"])
        done: int = checkpoint["base_done"]
    else:
        counts = checkpoint.get("counts", dict.fromkeys(_COUNTS, 0))
        done = checkpoint.get("done", 0)
    skip = 0 if incremental else done
    high = load_mark(checkpoint.get("high"))
    total = await reader.count(start)
    total = None if total is None else total + (done - skip)
    ctx.begin(done)
    state = _Marks(start, dict(counts), done)
    read: deque[list[SourceRow]] = deque()  # batches handed to the stream, oldest first

    async def batches() -> AsyncGenerator[list[Product], None]:
        consumed = 0
        async for chunk in reader.batches(ctx.stack.settings.ingest.batch_size, start):
            fresh = chunk[max(0, skip - consumed) :]
            consumed += len(chunk)
            if fresh:
                read.append(fresh)
                yield [r.product for r in fresh if r.product is not None]

    # The next batches' images are fetched and encoded while this one is written; reported once written.
    rows = batches()
    stream = ctx.stack.ingest.upsert_stream(rows, job=ctx.job.id, source=reader.key)
    async with contextlib.aclosing(rows), contextlib.aclosing(stream):
        async for outcomes in stream:
            fresh = read.popleft()
            by_id = {o.id: o for o in outcomes}
            errors: list[RowError] = []
            for row in fresh:
                if incremental:
                    state.enter(row.changed, counts, done)
                outcome = by_id.get(row.product.id) if row.product is not None else None
                _count(counts, row, outcome, errors)
                done += 1
                high = later(high, row.changed)
            point = {"since": dump_mark(since), "done": done, "counts": counts, "high": dump_mark(high)}
            if incremental:
                point |= {"mark": dump_mark(state.mark), "base_counts": state.base_counts, "base_done": state.base_done}
            await ctx.report(done, max(total or 0, done), dict(counts), point, errors)
    return counts, high


class _Marks:
    """The updated_at value the read has reached, and the counts from before the first row that had it."""

    def __init__(self, mark: Any, counts: dict[str, int], done: int) -> None:
        self.mark, self.base_counts, self.base_done = mark, counts, done
        self._seen = False

    def enter(self, changed: Any, counts: dict[str, int], done: int) -> None:
        if not self._seen or changed != self.mark:
            self.mark, self.base_counts, self.base_done, self._seen = changed, dict(counts), done, True


def _count(counts: dict[str, int], row: SourceRow, outcome: Outcome | None, errors: list[RowError]) -> None:
    if row.product is None or outcome is None:
        counts["rejected"] += 1
        errors.append(RowError(row=row.position, id=row.key, message=row.error or "invalid row"))
        return
    counts[outcome.status] = counts.get(outcome.status, 0) + 1
    if outcome.status == "rejected":
        errors.append(RowError(row=row.position, id=row.key, message=outcome.error or "rejected"))


async def _delete_missing(ctx: JobContext, reader: SourceReader, counts: dict[str, int]) -> int:
    """Delete the products this source supplied that it no longer has; returns how many."""
    present = await reader.ids()
    supplied = await ctx.stack.mongo.ids_from_source(reader.key)
    gone = sorted(supplied - present)
    if gone and not present:
        raise InvalidInput(_EMPTY_SOURCE.format(n=len(gone)))
    deleted = 0
    size = ctx.stack.settings.ingest.batch_size
    for first in range(0, len(gone), size):
        removed, _ = await ctx.stack.ingest.delete(gone[first : first + size])
        deleted += len(removed)
    return deleted
