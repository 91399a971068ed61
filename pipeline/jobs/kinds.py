"""What each kind of job does, as a function of the stack: batch by batch, reporting after each batch.

A kind reads its checkpoint first and goes on from there, so an interrupted job resumed by a restart neither
repeats nor skips work; counts ride in the checkpoint, and products a job already wrote count as they did
the first time (see ``IngestService.upsert``). A cancel asked for is honoured between batches, so nothing is
left half-written; a re-index is cancelled as a whole (its new collection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import httpx

from pipeline.catalog import Row, count_rows, read_catalog
from pipeline.errors import InvalidInput
from pipeline.jobs.context import Cancelled, JobContext, ProgressHook, tally
from pipeline.jobs.index_phase import BULK, build_graph_if_due, reindex_reporting
from pipeline.jobs.model import (
    PARAMS,
    ActivateParams,
    EmbedAllParams,
    IdsParams,
    IngestParams,
    JobKind,
    NoParams,
    RowError,
    TrainParams,
)
from pipeline.jobs.sync import run_source_ingest, run_sync
from pipeline.schemas import Product

__all__ = ["KINDS", "Cancelled", "JobContext", "ProgressHook", "run_job"]
_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv"}
_TYPES = {
    "application/json": ".json",
    "text/csv": ".csv",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
}


async def _download(ctx: JobContext, url: str) -> Path:
    """The catalog at ``url`` into the service's data folder (kept until the job ends, for a resume)."""
    if urlparse(url).scheme not in ("http", "https"):
        raise InvalidInput(f"{url}: a catalog URL must be http(s)")
    folder = ctx.stack.settings.qdrant.path.parent / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = PurePosixPath(urlparse(url).path).suffix.lower()
    done = [p for p in folder.glob(f"{ctx.job.id}.*") if p.suffix in _SUFFIXES]
    if done:
        return done[0]
    limit = ctx.stack.settings.ingest.max_catalog_bytes
    partial = folder / f"{ctx.job.id}.part"
    http = ctx.stack.ingest.http if ctx.local else ctx.http  # API callers reach public hosts only
    timeout_s = ctx.stack.settings.ingest.catalog_timeout_s
    try:
        async with asyncio.timeout(timeout_s), http.stream("GET", url) as resp:
            resp.raise_for_status()
            kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            suffix = suffix if suffix in _SUFFIXES else _TYPES.get(kind, "")
            if not suffix:
                raise InvalidInput(f"{url}: not a catalog (.jsonl, .json or .csv; content type {kind or 'none'})")
            size = 0
            fh = await asyncio.to_thread(open, partial, "wb")
            try:
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInput(f"{url}: over the catalog size limit of {limit} bytes")
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                await asyncio.to_thread(fh.close)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{url}: download failed ({exc})") from exc
    except TimeoutError:
        partial.unlink(missing_ok=True)
        raise InvalidInput(
            f"{url}: not downloaded within {timeout_s:.0f} s (PIPELINE__INGEST__CATALOG_TIMEOUT_S)"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial.rename(partial.with_suffix(suffix))


async def run_ingest(ctx: JobContext, p: IngestParams) -> dict[str, Any]:
    if p.source is not None:
        return await run_source_ingest(ctx, p.source)
    path = Path(p.path) if p.path else await _download(ctx, str(p.url))
    try:
        counts = await _ingest_file(ctx, p, path)
    except Exception:  # failed or cancelled: a downloaded copy goes (a shutdown keeps it for the resume)
        if p.url:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    if p.url:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    return counts


async def _ingest_file(ctx: JobContext, p: IngestParams, path: Path) -> dict[str, Any]:
    checkpoint = await ctx.store.checkpoint(ctx.job.id)
    skip: int = checkpoint.get("rows", 0)
    counts: dict[str, int] = checkpoint.get("counts", {"added": 0, "updated": 0, "unchanged": 0, "rejected": 0})
    total = await asyncio.to_thread(count_rows, path)
    rows = read_catalog(path, ctx.stack.settings.ingest.strict_fields, p.url)
    http = None if (ctx.local or p.path) else ctx.http
    size = ctx.stack.settings.ingest.batch_size
    read: deque[tuple[int, list[Row]]] = deque()  # batches handed to the stream, oldest first

    async def batches() -> AsyncGenerator[list[Product], None]:
        consumed = 0
        while chunk := await asyncio.to_thread(list, itertools.islice(rows, size)):
            fresh = chunk[max(0, skip - consumed) :]  # rows before the checkpoint were done by an earlier run
            consumed += len(chunk)
            if fresh:
                read.append((consumed, fresh))
                yield [r.product for r in fresh if r.product is not None]

    ctx.begin(skip)
    # Images of the next batches are fetched and encoded while this one is written (upsert_stream); a batch
    # is reported, and checkpointed, only once it is written.
    source = batches()
    stream = ctx.stack.ingest.upsert_stream(source, http=http, job=ctx.job.id)
    async with contextlib.aclosing(source), contextlib.aclosing(stream):
        async for outcomes in stream:
            consumed, fresh = read.popleft()
            errors = [RowError(row=r.line, message=r.error or "invalid row") for r in fresh if r.product is None]
            counts["rejected"] += len(errors)
            errors += tally(counts, outcomes, {r.product.id: r.line for r in fresh if r.product is not None})
            await ctx.report(consumed, total or consumed, dict(counts), {"rows": consumed, "counts": counts}, errors)
    return counts


async def run_embed(ctx: JobContext, p: IdsParams) -> dict[str, Any]:
    checkpoint = await ctx.store.checkpoint(ctx.job.id)
    start: int = checkpoint.get("next", 0)
    counts: dict[str, int] = checkpoint.get("counts", {"added": 0, "updated": 0, "unchanged": 0, "rejected": 0})
    ids = list(dict.fromkeys(p.ids))
    size = ctx.stack.settings.ingest.batch_size
    ctx.begin(start)
    for first in range(start, len(ids), size):
        chunk = ids[first : first + size]
        found = await ctx.stack.mongo.get_products(chunk)
        errors = [RowError(id=i, message="no such product") for i in chunk if i not in found]
        counts["rejected"] += len(errors)
        products = [found[i] for i in chunk if i in found]
        outcomes = await ctx.stack.ingest.upsert(products, job=ctx.job.id, force=p.force) if products else []
        errors += tally(counts, outcomes, {})
        done = first + len(chunk)
        await ctx.report(done, len(ids), dict(counts), {"next": done, "counts": counts}, errors)
    return counts


async def run_embed_all(ctx: JobContext, p: EmbedAllParams) -> dict[str, Any]:
    checkpoint = await ctx.store.checkpoint(ctx.job.id)
    after: str | None = checkpoint.get("after")
    done: int = checkpoint.get("done", 0)
    counts: dict[str, int] = checkpoint.get("counts", {"added": 0, "updated": 0, "unchanged": 0, "rejected": 0})
    total = done + (await ctx.stack.mongo.counts_after(after))
    size = ctx.stack.settings.ingest.batch_size
    ctx.begin(done)

    async def batches() -> AsyncGenerator[list[Product], None]:
        batch: list[Product] = []
        async for product in ctx.stack.mongo.iter_products(after=after):
            batch.append(product)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    source = batches()
    stream = ctx.stack.ingest.upsert_stream(source, job=ctx.job.id, force=p.force)
    async with contextlib.aclosing(source), contextlib.aclosing(stream):
        async for outcomes in stream:  # this batch is written now (checkpointed after it, never ahead)
            errors = tally(counts, outcomes, {})
            done += len(outcomes)
            checkpoint = {"after": outcomes[-1].id, "done": done, "counts": counts}
            await ctx.report(done, total, dict(counts), checkpoint, errors)
    return counts


async def run_delete(ctx: JobContext, p: IdsParams) -> dict[str, Any]:
    checkpoint = await ctx.store.checkpoint(ctx.job.id)
    start: int = checkpoint.get("next", 0)
    counts: dict[str, int] = checkpoint.get("counts", {"deleted": 0, "unknown": 0})
    # A batch an interrupted run may have deleted without reporting: its ids count as deleted, not unknown.
    pending = set(checkpoint.get("pending", []))
    ids = list(dict.fromkeys(p.ids))
    size = ctx.stack.settings.ingest.batch_size
    ctx.begin(start)
    for first in range(start, len(ids), size):
        chunk = ids[first : first + size]
        await ctx.store.save_checkpoint(ctx.job.id, {"next": first, "counts": counts, "pending": chunk})
        deleted, unknown = await ctx.stack.ingest.delete(chunk)
        gone_before = [i for i in unknown if i in pending]
        counts["deleted"] += len(deleted) + len(gone_before)
        counts["unknown"] += len(unknown) - len(gone_before)
        pending = set()
        errors = [RowError(id=i, message="no such product") for i in unknown if i not in gone_before]
        done = first + len(chunk)
        await ctx.report(done, len(ids), dict(counts), {"next": done, "counts": counts}, errors)
    return counts


async def run_reindex(ctx: JobContext, p: NoParams) -> dict[str, Any]:
    await ctx.stack.follow()  # rebuild the active generation's collection, not one this process served before
    total = (await ctx.stack.mongo.counts())["products"]
    ctx.begin(0)
    building = {"reindexed": total, "phase": "building the graphs"}
    return await reindex_reporting(
        ctx,
        lambda done: ctx.report(done, total, {"reindexed": done}, {}, []),
        lambda seconds: ctx.report(total, total, {**building, "seconds": round(seconds)}, {}, []),
    )


async def run_train_kind(ctx: JobContext, p: TrainParams) -> dict[str, Any]:
    from pipeline.lifecycle.train_job import run_train

    return await run_train(ctx, p)


async def run_activate_kind(ctx: JobContext, p: ActivateParams) -> dict[str, Any]:
    from pipeline.lifecycle.train_job import run_activate

    return await run_activate(ctx, p.version, p.force)


_Kind = Callable[[JobContext, Any], Awaitable[dict[str, Any]]]
KINDS: dict[JobKind, _Kind] = {
    JobKind.INGEST: run_ingest,
    JobKind.SYNC: run_sync,
    JobKind.EMBED: run_embed,
    JobKind.EMBED_ALL: run_embed_all,
    JobKind.DELETE: run_delete,
    JobKind.REINDEX: run_reindex,
    JobKind.TRAIN: run_train_kind,
    JobKind.ACTIVATE: run_activate_kind,
}


async def run_job(ctx: JobContext) -> dict[str, Any]:
    """Run the job of ``ctx`` to its end; raises Cancelled, or the error that failed it."""
    params = PARAMS[ctx.job.kind].model_validate(ctx.job.params)
    if ctx.job.kind not in BULK:
        return await KINDS[ctx.job.kind](ctx, params)
    # On Qdrant Edge, one graph build for the whole load (pipeline.jobs.index_phase); a run interrupted during
    # it resumes there, without reading its rows (or downloading its catalog) again.
    resumed = (await ctx.store.checkpoint(ctx.job.id)).get("index_phase")
    result = resumed["result"] if resumed else await KINDS[ctx.job.kind](ctx, params)
    return await build_graph_if_due(ctx, result, resumed)
