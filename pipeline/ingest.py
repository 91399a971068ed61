"""Catalog ingestion, deletion and re-indexing.

Per batch: read the ingest state from MongoDB → skip rows whose content and model are unchanged → load and
encode the rest (one encoder call per product, so a bad image rejects only its row while the micro-batcher
still batches them all) → write metadata (marked "not indexed") → upsert vectors → mark indexed. A crash at
any point leaves rows marked "not indexed", which the next run redoes; point ids are deterministic, so a redo
never duplicates.

A bulk ingest goes through :meth:`IngestService.upsert_stream`: while one batch is written, the next ones'
images are fetched (per-host limit, retries: ``pipeline.image_fetch``) and encoded, so the encoder is not left
waiting on downloads and writes. What a batch writes is still decided under the write lock, from a fresh read
of its state, exactly as :meth:`IngestService.upsert` decides it; work done ahead is only reused when it is
still what that decision asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
import numpy as np

from pipeline.catalog import Row, is_url, read_catalog
from pipeline.config import IngestSettings, LimitsSettings
from pipeline.encoders.base import Encoder
from pipeline.errors import PipelineError
from pipeline.image_fetch import ImageFetcher, fetch_once
from pipeline.product_vectors import Ahead, ProductVectors
from pipeline.schemas import IngestReport, Outcome, Product
from pipeline.stores.mongo import IngestState, MongoStore
from pipeline.stores.vectors import BuildWatch, ModelStamp, VectorIndex, VectorPoint, payload_of
from pipeline.stores.write_lock import WriteLock
from pipeline.types import Modality

if TYPE_CHECKING:
    from pipeline.lifecycle.generation import Generation

Progress = Callable[[int], None]


def image_identity(ref: str) -> str:
    """What changes when an image changes, without reading it: size and mtime for files, the URL itself."""
    if is_url(ref):
        return ref
    try:
        st = Path(ref).stat()
    except OSError:
        return f"{ref}:missing"
    return f"{ref}:{st.st_size}:{st.st_mtime_ns}"


def _content_hashes(products: Sequence[Product]) -> dict[str, str]:
    return {p.id: p.content_hash(",".join(map(image_identity, p.images))) for p in products}


def _current(state: IngestState | None, content_hash: str, stamp: ModelStamp) -> bool:
    """Whether ``state`` says this content's vectors, made by this model, are in the index."""
    return (
        state is not None
        and state.content_hash == content_hash
        and state.indexed_hash == content_hash
        and state.fingerprint == stamp.fingerprint
    )


class IngestService:
    """Writes go to the stack's current generation, resolved under the write lock: a switch holds the lock
    alone, so a write is decided, encoded and stored with one generation's model and collection. A switch made
    by another process is followed (``follow``) before writing."""

    def __init__(
        self,
        current: Callable[[], Generation],
        mongo: MongoStore,
        http: httpx.AsyncClient,
        fetcher: ImageFetcher,
        lock: WriteLock,
        settings: IngestSettings,
        limits: LimitsSettings,
        follow: Callable[[str | None], Awaitable[None]] | None = None,
    ) -> None:
        self._current, self._follow = current, follow
        self.mongo, self.http, self.fetcher = mongo, http, fetcher
        self.lock, self.settings, self.limits = lock, settings, limits

    @property
    def encoder(self) -> Encoder:
        return self._current().encoder

    @property
    def index(self) -> VectorIndex:
        return self._current().index

    @property
    def vectors(self) -> ProductVectors:
        return self._current().vectors

    @property
    def stamp(self) -> ModelStamp:
        return ModelStamp.of(self.encoder.info)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """The shared write lock, on the generation writes go to now."""
        async with self.lock.shared(self.settings.write_wait_s) as generation:
            if self._follow is not None and generation is not None:  # None: no switch was ever made
                await self._follow(generation)
            yield

    # --- images ----------------------------------------------------------------------------------------------

    async def load_image(self, ref: str, http: httpx.AsyncClient | None = None) -> bytes:
        """Bytes of a file or URL in one try (a query's image), refused past the size limit; a URL that hangs
        is cut off by a timeout. Ingestion fetches through ``self.fetcher`` (per-host limit, retries)."""
        return await fetch_once(ref, http or self.http, self.settings.http_timeout_s, self.limits.max_image_bytes)

    @staticmethod
    def _points(product: Product, images: np.ndarray, text: np.ndarray) -> list[VectorPoint]:
        return [VectorPoint(product.id, i, images[i], text, payload_of(product, i)) for i in range(len(images))]

    # --- ingest ------------------------------------------------------------------------------------------------

    async def ingest(self, catalog: Path, progress: Progress | None = None) -> IngestReport:
        """Ingest a JSONL/CSV catalog; returns counts and the rejected rows with line numbers."""
        report = IngestReport()
        start = time.perf_counter()
        rows = read_catalog(catalog, self.settings.strict_fields)
        size = self.settings.batch_size
        # Reading and parsing the file runs in a thread, a batch at a time: the event loop keeps serving.
        while chunk := await asyncio.to_thread(list, itertools.islice(rows, size)):
            for row in chunk:
                if row.product is None:
                    report.rejected.append((row.line, row.error or "invalid row"))
            batch = [row for row in chunk if row.product is not None]
            if batch:
                await self._ingest_batch(batch, report)
            if progress:
                progress(len(chunk))
        report.rejected.sort()
        report.seconds = time.perf_counter() - start
        return report

    async def _ingest_batch(self, rows: list[Row], report: IngestReport) -> None:
        products = [r.product for r in rows if r.product]
        line_of = {p.id: r.line for r, p in zip(rows, products, strict=True)}
        for outcome in await self.upsert(products):
            if outcome.status == "rejected":
                report.rejected.append((line_of[outcome.id], outcome.error or "rejected"))
            else:
                setattr(report, outcome.status, getattr(report, outcome.status) + 1)

    async def upsert(
        self,
        products: Sequence[Product],
        http: httpx.AsyncClient | None = None,
        job: str | None = None,
        force: bool = False,
        source: str | None = None,
    ) -> list[Outcome]:
        """Store and index products (distinct ids); one outcome per product, in order. A product whose
        content and model are unchanged costs one state read (``force`` embeds it anyway); one whose images
        fail is rejected alone. ``http`` fetches image URLs (default: the service's own client). A ``job``
        marks what it writes, so when it is resumed a product it already wrote counts as it did then; a
        ``source`` (a catalog source's key) marks where the products came from, for a sync's deletions.
        Waits for a running re-index."""
        async with self._writing():
            return await self._upsert(products, http, job, force, source)

    async def upsert_stream(
        self,
        batches: AsyncIterable[Sequence[Product]],
        *,
        http: httpx.AsyncClient | None = None,
        job: str | None = None,
        force: bool = False,
        source: str | None = None,
    ) -> AsyncGenerator[list[Outcome], None]:
        """``upsert`` of each batch in turn, yielding its outcomes once it is written, while the images of up
        to ``prefetch_batches`` batches ahead are fetched and encoded. Each batch is decided and written under
        the write lock as ``upsert`` would (same outcomes); nothing ahead of the yielded batch is written.

        Close it when you stop early (``async with contextlib.aclosing(svc.upsert_stream(...)) as s``): the
        work under way ahead is then cancelled and awaited. ``batches`` is pulled by the caller's task, only
        while the stream is iterated. Raises what ``upsert`` raises, at the batch it concerns.
        """
        source_batches = aiter(batches)
        pending: deque[tuple[list[Product], asyncio.Task[Ahead]]] = deque()
        last: asyncio.Task[Ahead] | None = None
        more, source_error = True, None
        try:
            while True:
                while more and len(pending) <= self.settings.prefetch_batches:
                    try:
                        products = list(await anext(source_batches))
                    except StopAsyncIteration:
                        more = False
                        break
                    except Exception as exc:  # raised once the batches read before it are written, as in a loop
                        more, source_error = False, exc
                        break
                    last = asyncio.create_task(self._prepare(products, http, force, last), name="ingest ahead")
                    pending.append((products, last))
                if not pending:
                    if source_error is not None:
                        raise source_error
                    return
                products, task = pending[0]
                try:
                    ahead: Ahead | None = await task
                except PipelineError:
                    ahead = None  # the batch's own turn below redoes the work, and raises if it still applies
                pending.popleft()
                async with self._writing():
                    outcomes = await self._upsert(products, http, job, force, source, ahead)
                yield outcomes
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    async def _prepare(
        self, products: list[Product], http: httpx.AsyncClient | None, force: bool, after: asyncio.Task[Ahead] | None
    ) -> Ahead:
        """Fetch and encode, ahead of their turn, the products that need it as their state reads now."""
        hashes = await asyncio.to_thread(_content_hashes, products)
        states, stamp = await self.mongo.get_states(list(hashes)), self.stamp
        todo = [p for p in products if force or not _current(states.get(p.id), hashes[p.id], stamp)]
        return await self.vectors.encode_ahead(todo, hashes, http, after)

    async def _upsert(
        self,
        products: Sequence[Product],
        http: httpx.AsyncClient | None,
        job: str | None,
        force: bool,
        source: str | None,
        ahead: Ahead | None = None,
    ) -> list[Outcome]:
        stamp = self.stamp
        hashes = await asyncio.to_thread(_content_hashes, products)  # a stat per image file: off the loop
        states = await self.mongo.get_states(list(hashes))
        outcomes: dict[str, Outcome] = {}
        todo: list[Product] = []
        claimed: list[str] = []  # unchanged products a source now claims (a file ingest wrote them first)
        # What writing each product is: added or updated (for a resumed job, as its first run saw it).
        status: dict[str, Literal["added", "updated"]] = {}
        for product in products:
            state, h = states.get(product.id), hashes[product.id]
            mine = job is not None and state is not None and state.job == job and state.job_status is not None
            was_update = state is not None and (state.job_status == "updated" if mine else True)
            status[product.id] = "updated" if was_update else "added"
            if state is not None and _current(state, h, stamp) and not force:
                outcomes[product.id] = Outcome(product.id, status[product.id] if mine else "unchanged")
                if source is not None and state.source != source:
                    claimed.append(product.id)
            else:
                todo.append(product)
        encoded, failed = await self.vectors.encode_reusing(todo, hashes, http, ahead) if todo else ([], [])
        for product, reason in failed:
            outcomes[product.id] = Outcome(product.id, "rejected", reason)
        if encoded:
            await self.mongo.upsert_products([(p, hashes[p.id]) for p, _, _ in encoded], job, status, source)
            await self.index.upsert([pt for p, img, txt in encoded for pt in self._points(p, img, txt)])
            for product, _, _ in encoded:
                if product.id in states:  # a product that lost images keeps no stale points
                    await self.index.delete_products([product.id], from_image=len(product.images))
            await self.mongo.mark_indexed([(p.id, hashes[p.id]) for p, _, _ in encoded], stamp.fingerprint)
            for product, _, _ in encoded:
                outcomes[product.id] = Outcome(product.id, status[product.id])
        if claimed:
            await self.mongo.set_source(claimed, source)
        return [outcomes[p.id] for p in products]

    # --- delete and reindex ------------------------------------------------------------------------------------

    async def delete(self, product_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Delete products everywhere; returns (deleted ids, unknown ids). Waits for a running re-index."""
        ids = list(dict.fromkeys(str(i) for i in product_ids))
        async with self._writing():
            states = await self.mongo.get_states(ids)  # one read, not one per id
            known = [i for i in ids if i in states]
            if known:
                await self.mongo.mark_unindexed(known)  # a crash from here on is redone, not forgotten
                await self.index.delete_products(known)
                await self.mongo.delete_products(known)
        return known, [i for i in ids if i not in known]

    async def reindex(self, progress: Progress | None = None, watch: BuildWatch | None = None) -> IngestReport:
        """Rebuild the collection from every product in MongoDB (with the index settings of now) and swap it
        in atomically. With another model than the live collection's, every product is embedded again; with
        the same model, a product whose stored vectors are those of its current content is copied instead
        (an index-settings change costs no model call), and only the others are embedded; with the same model
        and another title tower (``PIPELINE__ENCODER__CATALOG_LANGUAGE`` changed), its image vectors are
        copied and its title embedded again.

        The live collection keeps answering until the swap. Products embedded again whose images can no
        longer be read are reported and left out of the new collection (their metadata stays). Product writes wait until
        it is done (raises Busy when another re-index runs). ``progress`` is called after each batch, before
        the swap; an exception it raises abandons the re-index (the new collection is dropped). ``watch(seconds)``
        is awaited every few seconds while the engine builds the index, and may abandon it the same way.
        """
        async with self.lock.exclusive():
            return await self._reindex(progress, watch)

    async def _reindex(self, progress: Progress | None, watch: BuildWatch | None) -> IngestReport:
        report = IngestReport()
        start = time.perf_counter()
        stamp = self.stamp
        indexed: list[tuple[str, str]] = []
        left_out: list[str] = []
        # With the same model (an index-settings change, a repair), a product whose stored vectors are those of
        # its current content is copied from the live collection instead of embedded again; with the same image
        # model and another title tower (the catalog's language changed), its image vectors are.
        live = (await self.index.info()).stamp
        same_images = live is not None and (live.fingerprint, live.dim) == (stamp.fingerprint, stamp.dim)
        reuse = "all" if stamp.matches(live) else "images" if same_images else None
        async with self.index.rebuild(stamp, watch) as staged:
            batch: list[Product] = []
            async for product in self.mongo.iter_products():
                batch.append(product)
                if len(batch) >= self.settings.batch_size:
                    await self._reindex_batch(batch, staged, report, indexed, left_out, reuse)
                    if progress:
                        progress(len(batch))
                    batch = []
            if batch:
                await self._reindex_batch(batch, staged, report, indexed, left_out, reuse)
                if progress:
                    progress(len(batch))
        # Only now is the new collection live: record which model made whose vectors.
        await self.mongo.mark_indexed(indexed, stamp.fingerprint)
        if left_out:
            await self.mongo.mark_unindexed(left_out)
        report.seconds = time.perf_counter() - start
        return report

    async def _reindex_batch(
        self,
        batch: list[Product],
        staged: VectorIndex,
        report: IngestReport,
        indexed: list[tuple[str, str]],
        left_out: list[str],
        reuse: str | None,
    ) -> None:
        states = await self.mongo.get_states([p.id for p in batch])
        copied = await self._stored_vectors(batch, states) if reuse else []
        if reuse == "images" and copied:  # the titles embedded again by the tower of now
            titles = await self.vectors.encode_titles([p for p, _, _ in copied])
            copied = [(p, images, titles[i]) for i, (p, images, _) in enumerate(copied)]
        done = {p.id for p, _, _ in copied}
        encoded, failed = await self.vectors.encode([p for p in batch if p.id not in done])
        encoded = [*copied, *encoded]
        report.rejected.extend((0, f"{p.id}: {reason}") for p, reason in failed)
        left_out.extend(p.id for p, _ in failed)
        await staged.upsert([pt for p, img, txt in encoded for pt in self._points(p, img, txt)])
        indexed.extend((p.id, states[p.id].content_hash or "") for p, _, _ in encoded if p.id in states)
        report.updated += len(encoded)
        report.copied += len(copied)

    async def _stored_vectors(
        self, batch: list[Product], states: dict[str, IngestState]
    ) -> list[tuple[Product, np.ndarray, np.ndarray]]:
        """The products of ``batch`` whose live vectors are current (this model, this content, every image),
        with those vectors."""
        fingerprint = self.stamp.fingerprint
        current = [p for p in batch if (st := states.get(p.id)) is not None and st.fingerprint == fingerprint
                   and st.indexed_hash is not None and st.indexed_hash == st.content_hash]  # fmt: skip
        # the live stamp was compared by the caller (its titles may be another tower's, re-embedded there)
        stored = await self.index.vectors_of([p.id for p in current], check=False) if current else {}
        out = []
        for product in current:
            spaces = stored.get(product.id, {})
            images, text = spaces.get(Modality.IMAGE, []), spaces.get(Modality.TEXT, [])
            if len(images) == len(product.images) and text:
                out.append((product, np.stack(images), text[0]))
        return out
