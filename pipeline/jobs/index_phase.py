"""Re-indexing inside a job: the ``reindex`` job itself, and the graph a bulk job builds when it ends.

Qdrant Edge builds HNSW graphs only when a shard is optimized, which holds Python's GIL for the whole build
(see :mod:`pipeline.stores.edge_optimize`), so the live shard never is: products written to it are scanned.
After a bulk job (``ingest``, ``sync``, ``embed-all``) that wrote (added or updated) ``exact_below`` products or
more, or after which that many points sit outside any graph, the job ends with a re-index that copies every
product's vectors into a new shard, builds its graphs in a child process and swaps it in: one build for the whole
bulk load, never one per batch, and the job's progress covers it (the build's seconds so far, every few seconds;
a cancel kills it). ``PIPELINE__INDEX__BUILD_AFTER_BULK=false``
leaves that to an explicit ``reindex``. A Qdrant server indexes by itself: nothing to do there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pipeline.errors import Busy, PipelineError
from pipeline.jobs.context import Cancelled, JobContext
from pipeline.jobs.model import JobKind
from pipeline.stores.vectors import BuildWatch
from pipeline.types import Modality

log = logging.getLogger(__name__)

BULK = frozenset({JobKind.INGEST, JobKind.SYNC, JobKind.EMBED_ALL})


async def reindex_reporting(
    ctx: JobContext, report: Callable[[int], Any], building: BuildWatch | None = None
) -> dict[str, Any]:
    """``ingest.reindex`` with ``report(done)`` (a coroutine function) after each batch and ``building(seconds)``
    every few seconds while the engine builds the index. A cancel one of them hears abandons the re-index (at the
    next batch, or killing the build: its new collection dropped, the live one untouched); once swapped,
    nothing cancels it."""
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

    async def watch(seconds: float) -> None:
        """During the build: a cancel heard by the last batch's report, or by this one, stops it; a failed
        progress write (the job store briefly unreachable) does not: the build goes on, the next one retries."""
        if stop:
            raise stop[0]
        if building is None:
            return
        try:
            await building(seconds)
        except Cancelled:
            raise
        except Exception as exc:
            log.warning("job %s: recording the build's progress failed: %s", ctx.job.id, exc)

    try:
        result = await ctx.stack.ingest.reindex(progress=advance, watch=watch)
    finally:
        await asyncio.gather(*pending, return_exceptions=True)
    return {
        "reindexed": result.updated,
        "copied": result.copied,
        "left_out": len(result.rejected),
        "seconds": round(result.seconds, 2),
    }


async def build_graph_if_due(ctx: JobContext, result: dict[str, Any], resumed: dict[str, Any] | None) -> dict[str, Any]:
    """``result`` of a bulk job, with ``index`` added when its writes (or earlier ones) left ``exact_below``
    points or more outside any graph: what the build did, or why it stopped. ``resumed``: the phase as a run
    interrupted during it recorded it (the rows are done: the build starts again, nothing is read again).

    The rows are written whatever happens here: a cancel or a failure during the build ends the job SUCCEEDED
    with ``index: {"cancelled"|"failed": why}`` and the live collection as it was (``reindex`` builds it later).
    """
    stack = ctx.stack
    if resumed is None:
        if not stack.settings.index.build_after_bulk:
            return result
        written = int(result.get("added", 0)) + int(result.get("updated", 0))
        if not (await stack.index.info()).graph_due(len(Modality), written):
            return result
        job = await ctx.store.get(ctx.job.id)
        resumed = {"rows_done": job.progress.done, "result": result}
    rows_done, result = int(resumed["rows_done"]), dict(resumed["result"])
    checkpoint = {**await ctx.store.checkpoint(ctx.job.id), "index_phase": resumed}  # a resume starts here
    products = (await stack.mongo.counts())["products"]
    total = rows_done + products
    log.info("job %s: building the index graph (re-index of %d products)", ctx.job.id, products)

    async def report(done: int, seconds: float | None = None) -> None:
        """``seconds``: how long the engine has been building (it gives no progress of its own)."""
        step = "copying vectors" if done < products else "building the graphs"  # then the engine builds
        phase: dict[str, Any] = {"phase": step, "done": done, "total": products}
        if seconds is not None:
            phase["seconds"] = round(seconds)
        await ctx.report(rows_done + done, total, {**result, "index": phase}, checkpoint, [])

    async def building(seconds: float) -> None:
        await report(products, seconds)

    ctx.begin(rows_done)  # the rate (and ETA) of the build, not of the rows
    try:
        await report(0)
        built = await reindex_reporting(ctx, report, building)
    except Cancelled as exc:
        return {**result, "index": {"cancelled": str(exc)}}
    except Busy as exc:  # another re-index holds the collection (its own build, or an activation's)
        return {**result, "index": {"skipped": str(exc)}}
    except PipelineError as exc:  # the copy or the build failed (disk full, the child killed): rows stay written
        log.warning("job %s: the index graph was not built: %s", ctx.job.id, exc)
        return {**result, "index": {"failed": str(exc)}}
    return {**result, "index": built}
