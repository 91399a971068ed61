"""Re-indexing inside a job: the ``reindex`` job itself, and the graph a bulk job builds when it ends.

Qdrant Edge builds HNSW graphs only when a shard is optimized, which holds Python's GIL for the whole build
(see :mod:`pipeline.stores.edge_optimize`), so the live shard never is: products written to it are scanned.
After a bulk job (``ingest``, ``sync``, ``embed-all``) has left at least ``exact_below`` points outside any
graph, the job ends with a re-index that copies every product's vectors into a new shard, builds its graphs in
a child process and swaps it in: one build for the whole bulk load, never one per batch, and the job's progress
covers it. ``PIPELINE__INDEX__BUILD_AFTER_BULK=false`` leaves that to an explicit ``reindex``. A Qdrant server
indexes by itself: nothing to do there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pipeline.errors import Busy
from pipeline.jobs.context import Cancelled, JobContext
from pipeline.jobs.model import JobKind
from pipeline.types import Modality

log = logging.getLogger(__name__)

BULK = frozenset({JobKind.INGEST, JobKind.SYNC, JobKind.EMBED_ALL})


async def reindex_reporting(ctx: JobContext, report: Callable[[int], Any]) -> dict[str, Any]:
    """``ingest.reindex`` with ``report(done)`` (a coroutine function) after each batch. A cancel one of them
    hears abandons the re-index at the next batch (its new collection dropped, the live one untouched); once
    swapped, nothing cancels it."""
    pending: set[asyncio.Task[None]] = set()
    stop: list[Cancelled] = []
    done = 0

    def note(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not task.cancelled() and isinstance(task.exception(), Cancelled):
            stop.append(task.exception())  # type: ignore[arg-type]

    def advance(n: int) -> None:
        nonlocal done
        if stop:
            raise stop[0]
        done += n
        task = asyncio.ensure_future(report(done))
        pending.add(task)
        task.add_done_callback(note)

    try:
        result = await ctx.stack.ingest.reindex(progress=advance)
    finally:
        await asyncio.gather(*pending, return_exceptions=True)
    return {
        "reindexed": result.updated,
        "copied": result.copied,
        "left_out": len(result.rejected),
        "seconds": round(result.seconds, 2),
    }


async def build_graph_if_due(ctx: JobContext, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of a bulk job, with ``index`` added when its writes left enough points outside any graph
    for a build (what the build did, or why it was skipped)."""
    stack = ctx.stack
    if not stack.settings.index.build_after_bulk:
        return result
    if not (await stack.index.info()).graph_due(len(Modality)):
        return result
    job = await ctx.store.get(ctx.job.id)
    checkpoint = await ctx.store.checkpoint(ctx.job.id)  # kept: a resume skips the rows, then builds again
    rows_done = job.progress.done
    products = (await stack.mongo.counts())["products"]
    total = rows_done + products
    log.info("job %s: %d products written; building the index graph (re-index of %d)", job.id, rows_done, products)

    async def report(done: int) -> None:
        phase = {"phase": "building the index graph", "done": done, "total": products}
        await ctx.report(rows_done + done, total, {**result, "index": phase}, checkpoint, [])

    ctx.begin(rows_done)  # the rate (and ETA) of the build, not of the rows
    await report(0)
    try:
        built = await reindex_reporting(ctx, report)
    except Busy as exc:  # another re-index (an activation) holds the collection: it builds the graphs too
        return {**result, "index": {"skipped": str(exc)}}
    return {**result, "index": built}
