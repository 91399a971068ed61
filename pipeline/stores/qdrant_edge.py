"""Qdrant Edge: Qdrant's own engine in-process (``qdrant-edge-py``), the embedded default.

Files under ``root``: ``<name>-<id>/`` shard folders and ``<name>.json``, the pointer naming the live shard
and the model stamp; a re-index fills a new shard and swaps the pointer with an atomic rename. One process
owns the folder: an exclusive ``flock`` on ``.lock`` keeps a second one out with a clear message (a second
``EdgeShard.load`` would break the owner's write-ahead log). Blocking engine calls run in threads, which the
engine allows inside the owning process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StoreUnavailable
from pipeline.fusion import PointHit
from pipeline.schemas import MAX_IMAGES, SearchFilters
from pipeline.stores.edge_objects import build_filter, search_params, shard_config
from pipeline.stores.edge_objects import edge as _edge
from pipeline.stores.edge_optimize import optimize_in_child
from pipeline.stores.index_config import IndexSpec
from pipeline.stores.vectors import (
    CLIP_TITLES,
    HIT_FIELDS,
    INDEXED_FIELDS,
    BuildWatch,
    IndexInfo,
    ModelStamp,
    SpaceQuery,
    VectorPoint,
    check_stamp,
    hit_of,
    narrows,
    vectors_by_product,
)
from pipeline.types import Modality

log = logging.getLogger(__name__)

INLINE_READS = 8  # a read of up to this many products' points runs on the event loop (see search)


class _Shard:
    """One open EdgeShard, the index settings it was built with, and a count of calls in flight, so a swap
    closes it only when idle."""

    def __init__(self, shard: Any, path: Path, spec: IndexSpec | None) -> None:
        self.shard = shard
        self.path = path
        self.spec = spec
        self.params = {f: search_params(spec, f) for f in (False, True)}  # unfiltered / filtered
        self.users = 0
        self.idle = asyncio.Event()
        self.idle.set()


class EdgeIndex:
    backend = "qdrant-edge"

    def __init__(self, root: Path, name: str, spec: IndexSpec | None = None) -> None:
        self.root = Path(root)
        self.name = name
        self.spec = spec  # for the shards this handle creates (the first one, and every re-index)
        self._lock_fh: Any = None
        self._live: _Shard | None = None
        self._stamp: ModelStamp | None = None
        self._expected: ModelStamp | None = None
        self.last_build: dict[str, Any] | None = None  # what the last graph build's child reported

    # --- lifecycle -------------------------------------------------------------------------------------

    def _acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115  (held open for the process's lifetime)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreUnavailable(
                f"{self.root} is in use by another process (Qdrant Edge is single-process); stop it, or set "
                "PIPELINE__QDRANT__URL to a Qdrant server to share vectors between processes"
            ) from None
        self._lock_fh = fh

    def _pointer(self) -> Path:
        return self.root / f"{self.name}.json"

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._pointer().read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreUnavailable(f"{self._pointer()} is corrupt ({exc})") from exc

    def _write_pointer(self, live: _Shard, stamp: ModelStamp) -> None:
        tmp = self._pointer().with_suffix(".json.tmp")
        index = live.spec.as_record() if live.spec else None
        tmp.write_text(json.dumps({"shard": live.path.name, "fingerprint": stamp.fingerprint, "dim": stamp.dim,
                                   "model": stamp.model, "titles": stamp.titles, "index": index}))  # fmt: skip
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self._pointer())

    def _create_shard(self, stamp: ModelStamp) -> _Shard:
        q = _edge()
        path = self.root / f"{self.name}-{uuid.uuid4().hex[:12]}"
        shard = q.EdgeShard.create(str(path), shard_config(stamp.dim, self.spec))
        kinds = {
            "keyword": q.PayloadSchemaType.Keyword,
            "float": q.PayloadSchemaType.Float,
            "integer": q.PayloadSchemaType.Integer,
        }
        for field, kind in INDEXED_FIELDS.items():
            shard.update(q.UpdateOperation.create_field_index(field, kinds[kind]))
        return _Shard(shard, path, self.spec)

    def _open_sync(self, stamp: ModelStamp) -> None:
        self._acquire()
        pointer = self._read_pointer()
        try:
            if pointer is None:
                self._live = self._create_shard(stamp)
                self._live.shard.flush()
                self._write_pointer(self._live, stamp)
                self._stamp = stamp
            else:
                path = self.root / pointer["shard"]
                spec = IndexSpec.from_record(pointer.get("index"))
                self._live = _Shard(_edge().EdgeShard.load(str(path)), path, spec)
                self._stamp = ModelStamp(
                    pointer["fingerprint"], int(pointer["dim"]), pointer["model"], pointer.get("titles", CLIP_TITLES)
                )
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreUnavailable(f"Qdrant Edge at {self.root}: {exc}") from exc
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """This collection's shard folders (``<name>-<12 hex>``) its pointer does not name: leftovers of an
        interrupted re-index. Another collection's shards (``products-eu-<hex>``, or one a pointer names) stay."""
        own = re.compile(re.escape(self.name) + r"-[0-9a-f]{12}")
        named = {self._live.path.name} if self._live else set()
        for pointer in self.root.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                named.add(json.loads(pointer.read_text())["shard"])
        for path in self.root.iterdir():
            if path.is_dir() and own.fullmatch(path.name) and path.name not in named:
                shutil.rmtree(path, ignore_errors=True)

    async def open(self, stamp: ModelStamp) -> None:
        self._expected = stamp
        await asyncio.to_thread(self._open_sync, stamp)

    async def _build_index(self, filled: _Shard, watch: BuildWatch | None = None) -> _Shard:
        """Close a filled shard nobody else uses, build its indexes in a child process (``optimize()`` holds
        the GIL: here it would stop the service for the whole build), and open it again. Without index
        settings (a shard of Qdrant's defaults), or below their ``exact_below``, it is only flushed."""
        points = (await asyncio.to_thread(filled.shard.info)).points_count
        if filled.spec is None or points < filled.spec.exact_below:  # nothing to build: scanned anyway
            await asyncio.to_thread(filled.shard.flush)
            return filled
        await asyncio.to_thread(self._close_shard, filled)
        filled.shard = None  # closed: a failure from here on leaves nothing to close, only the folder to drop
        self.last_build = await optimize_in_child(filled.path, watch)
        log.info("built the indexes of %s: %s", filled.path.name, self.last_build)
        filled.shard = await asyncio.to_thread(_edge().EdgeShard.load, str(filled.path))
        return filled

    async def aclose(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            await live.idle.wait()
            await asyncio.to_thread(self._close_shard, live)
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    async def drop(self) -> None:
        """Delete this collection (its live shard and pointer) and close the handle."""
        live = self._live
        await self.aclose()
        if live is not None:
            await asyncio.to_thread(shutil.rmtree, live.path, True)
        self._pointer().unlink(missing_ok=True)

    @staticmethod
    def _close_shard(live: _Shard) -> None:
        if live.shard is not None:
            live.shard.flush()
            live.shard.close()

    # --- calls ---------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _use(self, check: bool = True) -> AsyncIterator[_Shard]:
        if self._live is None:
            raise StoreUnavailable("Qdrant Edge index is not open")
        if check and self._expected is not None:
            check_stamp(self._stamp, self._expected, f"vector collection {self.root / self.name}")
        live = self._live
        live.users += 1
        live.idle.clear()
        try:
            yield live
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreUnavailable(f"Qdrant Edge at {self.root}: {exc}") from exc
        finally:
            live.users -= 1
            if live.users == 0:
                live.idle.set()

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        q = _edge()
        batch = [
            q.Point(p.id, {Modality.IMAGE.value: p.image.tolist(), Modality.TEXT.value: p.text.tolist()}, p.payload)
            for p in points
        ]
        async with self._use() as live:
            shard = live.shard
            await asyncio.to_thread(lambda: (shard.update(q.UpdateOperation.upsert_points(batch)), shard.flush()))

    async def delete_products(self, product_ids: Sequence[str], from_image: int = 0) -> None:
        if not product_ids:
            return
        q = _edge()
        flt = build_filter(SearchFilters(), products=product_ids, from_image=from_image)
        async with self._use(check=False) as live:
            shard = live.shard
            await asyncio.to_thread(
                lambda: (shard.update(q.UpdateOperation.delete_points_by_filter(flt)), shard.flush())
            )

    async def search(
        self,
        queries: Sequence[SpaceQuery],
        filters: SearchFilters,
        limit: int,
        min_similarity: float | None = None,
        exclude: Sequence[str] = (),
    ) -> list[list[PointHit]]:
        q = _edge()
        flt = build_filter(filters, exclude=exclude)
        async with self._use() as live:
            requests = [
                q.QueryRequest(
                    limit=limit,
                    query=q.Query.Nearest(sq.vector.astype(np.float32).tolist(), using=sq.using.value),
                    filter=flt,
                    score_threshold=min_similarity,
                    with_payload=q.PayloadSelector.Include(list(HIT_FIELDS)),  # what a hit reads, no more
                    with_vector=False,
                    params=live.params[narrows(filters, exclude)],
                )
                for sq in queries
            ]
            # Called on the event loop, not in a thread: qdrant-edge-py holds the GIL for the whole query (two
            # threads querying take as long as one doing both), so a thread would block the loop just the same
            # and add two hand-offs (measured: 2.2 -> 1.3 ms per text query at 10k products).
            results = live.shard.query_batch(q.QueryBatchRequest(requests))
        return [[hit_of(p.payload, p.score, sq.using) for p in res] for sq, res in zip(queries, results, strict=True)]

    async def product_vectors(self, product_id: str) -> dict[Modality, list[np.ndarray]]:
        return (await self.vectors_of([product_id])).get(product_id, {})

    async def vectors_of(
        self, product_ids: Sequence[str], check: bool = True
    ) -> dict[str, dict[Modality, list[np.ndarray]]]:
        q = _edge()
        flt, limit = build_filter(SearchFilters(), products=product_ids), MAX_IMAGES * max(1, len(product_ids))
        request = q.ScrollRequest(filter=flt, limit=limit, with_payload=True, with_vector=True)
        async with self._use(check) as live:
            if len(product_ids) <= INLINE_READS:  # see search: a thread would only add its hand-offs
                records, _ = live.shard.scroll(request)
            else:
                records, _ = await asyncio.to_thread(live.shard.scroll, request)
        return vectors_by_product(records)

    async def product_ids(self) -> set[str]:
        q = _edge()
        ids: set[str] = set()
        offset = None
        async with self._use(check=False) as live:
            while True:
                records, offset = await asyncio.to_thread(
                    live.shard.scroll,
                    q.ScrollRequest(
                        offset=offset,
                        limit=2048,
                        with_payload=q.PayloadSelector.Include(["product_id"]),
                        with_vector=False,
                    ),
                )
                ids.update(str((r.payload or {}).get("product_id")) for r in records)
                if offset is None:
                    return ids

    async def info(self) -> IndexInfo:
        async with self._use(check=False) as live:
            info = await asyncio.to_thread(live.shard.info)
            return IndexInfo(self.backend, str(self.root / self.name), int(info.points_count), self._stamp,
                             live.spec, int(info.indexed_vectors_count))  # fmt: skip

    @contextlib.asynccontextmanager
    async def rebuild(self, stamp: ModelStamp, watch: BuildWatch | None = None) -> AsyncIterator[EdgeIndex]:
        """Fill a new shard (with this handle's index settings), build its indexes once it is full (``watch``
        hears how long, every few seconds), then point at it atomically and retire the old one once idle. A
        failure or cancel before the swap (an exception from ``watch`` too) drops it."""
        if self._live is None:
            raise StoreUnavailable("Qdrant Edge index is not open")
        staged = EdgeIndex(self.root, self.name, self.spec)
        staged._live = await asyncio.to_thread(self._create_shard, stamp)
        staged._stamp = staged._expected = stamp
        try:
            yield staged
            new = await self._build_index(staged._live, watch)
        except BaseException:
            # The original error (or cancel) is what the caller must see, whatever closing the staged shard says.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(self._close_shard, staged._live))
            shutil.rmtree(staged._live.path, ignore_errors=True)
            raise
        await asyncio.to_thread(self._write_pointer, new, stamp)
        old, self._live, self._stamp = self._live, new, stamp
        self._expected = stamp
        await old.idle.wait()  # queries already running on the old shard finish there
        await asyncio.to_thread(self._close_shard, old)
        shutil.rmtree(old.path, ignore_errors=True)
