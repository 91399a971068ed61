"""Catalog ingestion, deletion and re-indexing.

Per batch: read the ingest state from MongoDB → skip rows whose content and model are unchanged → load and
encode the rest (one encoder call per product, so a bad image rejects only its row while the micro-batcher
still batches them all) → write metadata (marked "not indexed") → upsert vectors → mark indexed. A crash at
any point leaves rows marked "not indexed", which the next run redoes; point ids are deterministic, so a redo
never duplicates.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import httpx
import numpy as np

from pipeline.catalog import Row, is_url, read_catalog
from pipeline.config import IngestSettings, LimitsSettings
from pipeline.encoders.base import Encoder
from pipeline.errors import InvalidInput
from pipeline.schemas import IngestReport, Outcome, Product
from pipeline.stores.mongo import MongoStore
from pipeline.stores.vectors import ModelStamp, VectorIndex, VectorPoint, payload_of
from pipeline.stores.write_lock import WriteLock

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


def _read_file(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise InvalidInput(f"image {path}: {size} bytes is over the limit of {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"image {path}: cannot read ({exc.strerror or exc})") from exc


def _content_hashes(products: Sequence[Product]) -> dict[str, str]:
    return {p.id: p.content_hash(",".join(map(image_identity, p.images))) for p in products}


class IngestService:
    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        mongo: MongoStore,
        http: httpx.AsyncClient,
        lock: WriteLock,
        settings: IngestSettings,
        limits: LimitsSettings,
    ) -> None:
        self.encoder, self.index, self.mongo, self.http = encoder, index, mongo, http
        self.lock, self.settings, self.limits = lock, settings, limits

    @property
    def stamp(self) -> ModelStamp:
        info = self.encoder.info
        return ModelStamp(info.fingerprint, info.dim, info.model)

    # --- images ----------------------------------------------------------------------------------------------

    async def load_image(self, ref: str, http: httpx.AsyncClient | None = None) -> bytes:
        """Bytes of a file or URL, refused past the size limit; a URL that hangs is cut off by a timeout."""
        limit = self.limits.max_image_bytes
        if not is_url(ref):
            return await asyncio.to_thread(_read_file, Path(ref), limit)
        client = http or self.http
        try:
            async with asyncio.timeout(self.settings.http_timeout_s), client.stream("GET", ref) as resp:
                resp.raise_for_status()
                chunks, total = [], 0
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    if total > limit:
                        raise InvalidInput(f"image {ref}: over the limit of {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise InvalidInput(f"image {ref}: no answer within {self.settings.http_timeout_s:.0f} s") from None
        except httpx.HTTPError as exc:
            raise InvalidInput(f"image {ref}: download failed ({exc})") from exc

    async def _embed_product(self, product: Product, http: httpx.AsyncClient | None = None) -> np.ndarray:
        images = await asyncio.gather(*(self.load_image(ref, http) for ref in product.images))
        try:
            return await self.encoder.encode_images(list(images))
        except InvalidInput as exc:
            # The encoder names the image by position; say which file it was.
            message = str(exc)
            for i, ref in enumerate(product.images):
                message = message.replace(f"image {i}:", f"image {ref}:")
            raise InvalidInput(message) from exc

    async def _encode(
        self, products: Sequence[Product], http: httpx.AsyncClient | None = None
    ) -> tuple[list[tuple[Product, np.ndarray, np.ndarray]], list[tuple[Product, str]]]:
        """Vectors per product; products whose images fail are returned with the reason instead."""
        image_results = await asyncio.gather(*(self._embed_product(p, http) for p in products), return_exceptions=True)
        ok, failed = [], []
        for product, result in zip(products, image_results, strict=True):
            if isinstance(result, InvalidInput):
                failed.append((product, str(result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                ok.append((product, result))
        texts = await self.encoder.encode_texts([p.embedding_text() for p, _ in ok]) if ok else np.zeros((0, 0))
        return [(p, img, texts[i]) for i, (p, img) in enumerate(ok)], failed

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
        async with self.lock.shared(self.settings.write_wait_s):
            return await self._upsert(products, http, job, force, source)

    async def _upsert(
        self,
        products: Sequence[Product],
        http: httpx.AsyncClient | None,
        job: str | None,
        force: bool,
        source: str | None,
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
            current = state and state.content_hash == h and state.indexed_hash == h
            if current and state and state.fingerprint == stamp.fingerprint and not force:
                outcomes[product.id] = Outcome(product.id, status[product.id] if mine else "unchanged")
                if source is not None and state.source != source:
                    claimed.append(product.id)
            else:
                todo.append(product)
        encoded, failed = await self._encode(todo, http) if todo else ([], [])
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
        async with self.lock.shared(self.settings.write_wait_s):
            states = await self.mongo.get_states(ids)  # one read, not one per id
            known = [i for i in ids if i in states]
            if known:
                await self.mongo.mark_unindexed(known)  # a crash from here on is redone, not forgotten
                await self.index.delete_products(known)
                await self.mongo.delete_products(known)
        return known, [i for i in ids if i not in known]

    async def reindex(self, progress: Progress | None = None) -> IngestReport:
        """Re-embed every product in MongoDB into a new collection and swap it in atomically.

        The live collection keeps answering until the swap. Products whose images can no longer be read
        are reported and left out of the new collection (their metadata stays). Product writes wait until
        it is done (raises Busy when another re-index runs). ``progress`` is called after each batch, before
        the swap; an exception it raises abandons the re-index (the new collection is dropped).
        """
        async with self.lock.exclusive():
            return await self._reindex(progress)

    async def _reindex(self, progress: Progress | None) -> IngestReport:
        report = IngestReport()
        start = time.perf_counter()
        stamp = self.stamp
        indexed: list[tuple[str, str]] = []
        left_out: list[str] = []
        async with self.index.rebuild(stamp) as staged:
            batch: list[Product] = []
            async for product in self.mongo.iter_products():
                batch.append(product)
                if len(batch) >= self.settings.batch_size:
                    await self._reindex_batch(batch, staged, report, indexed, left_out)
                    if progress:
                        progress(len(batch))
                    batch = []
            if batch:
                await self._reindex_batch(batch, staged, report, indexed, left_out)
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
    ) -> None:
        states = await self.mongo.get_states([p.id for p in batch])
        encoded, failed = await self._encode(batch)
        report.rejected.extend((0, f"{p.id}: {reason}") for p, reason in failed)
        left_out.extend(p.id for p, _ in failed)
        await staged.upsert([pt for p, img, txt in encoded for pt in self._points(p, img, txt)])
        indexed.extend((p.id, states[p.id].content_hash or "") for p, _, _ in encoded if p.id in states)
        report.updated += len(encoded)
