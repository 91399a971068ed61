"""A Qdrant server (or cluster) through ``AsyncQdrantClient``; ``url=":memory:"`` is qdrant-client's local mode.

The live collection is reached through an alias (``products`` → ``products_<id>``); a re-index fills a new
collection and moves the alias in one atomic call, then drops the old one. The model stamp lives in the
collection's metadata. Local mode is brute force in Python: it is for tests, not for users.

Another process may re-index at any time, so calls never go through the alias blindly: each goes to the
concrete collection whose stamp was checked. Reads reuse that name for up to ``ALIAS_TTL_S`` (the old
collection still answers consistently, with its own model's vectors, until it is dropped; a dropped one sends
the call back to the alias); writes read the alias every time, so none lands in a retired collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import numpy as np
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from pipeline.errors import StoreUnavailable
from pipeline.fusion import PointHit
from pipeline.schemas import MAX_IMAGES, SearchFilters
from pipeline.stores.index_config import IndexSpec
from pipeline.stores.server_objects import build_filter, collection_config, search_params
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

_ERRORS = (ApiException, httpx.HTTPError, OSError, ValueError)
ALIAS_TTL_S = 1.0
_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "float": models.PayloadSchemaType.FLOAT,
    "integer": models.PayloadSchemaType.INTEGER,
}


def _missing(exc: BaseException | None) -> bool:
    """The collection called is gone (a server's 404, local mode's ValueError)."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    return isinstance(exc, ValueError) and "not found" in str(exc)


class ServerIndex:
    backend = "qdrant-server"

    def __init__(
        self,
        url: str,
        alias: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        client: AsyncQdrantClient | None = None,  # share another handle's connections
        shard_number: int = 1,  # of each collection this handle creates (first open, every re-index)
        replication_factor: int = 1,
        spec: IndexSpec | None = None,  # index settings of the collections this handle creates
    ) -> None:
        if url == ":memory:":
            self.backend = "qdrant-local"
        if client is not None:
            self._client = client
        elif url == ":memory:":
            self._client = AsyncQdrantClient(location=":memory:")
        else:
            self._client = AsyncQdrantClient(
                url=url, api_key=api_key, timeout=int(max(1, timeout_s)), check_compatibility=False
            )
        self.url = url
        self.alias = alias
        self.shard_number, self.replication_factor = shard_number, replication_factor
        self.spec = spec
        self._stamp: ModelStamp | None = None  # of the collection named by _live
        self._index: IndexSpec | None = None  # what the collection named by _live was built with
        self._params: dict[bool, models.SearchParams | None] = {False: None, True: None}
        self._expected: ModelStamp | None = None
        self._live: str | None = None  # the collection the alias named when last read
        self._read_at = 0.0
        self._staged: str | None = None  # a re-index view writes to its own collection, never through the alias

    @contextlib.asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except _ERRORS as exc:
            raise StoreUnavailable(f"Qdrant at {self.url}: {what} failed ({exc})") from exc

    async def _create_collection(self, name: str, stamp: ModelStamp, bulk: bool = False) -> None:
        """``bulk``: indexing off until :meth:`_index_now` (a re-index fills the collection first, then builds
        each graph once, as Qdrant advises for bulk uploads)."""
        index = self.spec.as_record() if self.spec else None
        await self._client.create_collection(
            name,
            shard_number=self.shard_number,  # local mode ignores these and the index settings
            replication_factor=self.replication_factor,
            metadata={
                "fingerprint": stamp.fingerprint,
                "dim": stamp.dim,
                "model": stamp.model,
                "titles": stamp.titles,
                "index": index,
            },
            **collection_config(stamp.dim, self.spec, bulk),
        )
        if self.backend != "qdrant-local":  # local mode ignores payload indexes (and warns)
            for field, kind in INDEXED_FIELDS.items():
                await self._client.create_payload_index(name, field, field_schema=_SCHEMAS[kind])

    async def _alias_target(self) -> str | None:
        aliases = (await self._client.get_aliases()).aliases
        return next((a.collection_name for a in aliases if a.alias_name == self.alias), None)

    async def open(self, stamp: ModelStamp) -> None:
        self._expected = stamp
        async with self._call("open"):
            if await self._alias_target() is None:
                name = f"{self.alias}_{uuid.uuid4().hex[:12]}"
                await self._create_collection(name, stamp)
                await self._client.update_collection_aliases(
                    change_aliases_operations=[
                        models.CreateAliasOperation(
                            create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias)
                        )
                    ]
                )
            await self._resolve()

    async def _resolve(self) -> str:
        """Read which collection the alias names now, and that collection's model stamp."""
        target = await self._alias_target()
        if target is None:
            raise StoreUnavailable(f"Qdrant at {self.url}: alias {self.alias!r} names no collection")
        meta = (await self._client.get_collection(target)).config.metadata or {}
        self._stamp = (
            ModelStamp(meta["fingerprint"], int(meta["dim"]), meta["model"], meta.get("titles", CLIP_TITLES))
            if meta
            else None
        )
        self._index = IndexSpec.from_record(meta.get("index"))
        self._params = {f: search_params(self._index, f) for f in (False, True)}
        self._live, self._read_at = target, time.monotonic()
        return target

    async def _on(
        self, what: str, call: Callable[[str], Awaitable[Any]], *, write: bool = False, check: bool = True
    ) -> Any:
        """Run ``call(collection)`` on the collection the alias names, after checking that collection's stamp."""
        if self._staged is not None:
            async with self._call(what):
                return await call(self._staged)
        for attempt in range(2):
            async with self._call(what):
                fresh = self._live is not None and time.monotonic() - self._read_at < ALIAS_TTL_S
                name = self._live if fresh and not write and attempt == 0 else await self._resolve()
                assert name is not None
            if check and self._expected is not None:
                check_stamp(self._stamp, self._expected, f"Qdrant collection {self.alias!r} ({name})")
            try:
                async with self._call(what):
                    return await call(name)
            except StoreUnavailable as exc:
                if attempt or not _missing(exc.__cause__):
                    raise
                # Dropped by another process's re-index since we read the alias: read it again.
        raise AssertionError("unreachable")

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        batch = [
            models.PointStruct(
                id=p.id,
                vector={Modality.IMAGE.value: p.image.tolist(), Modality.TEXT.value: p.text.tolist()},
                payload=p.payload,
            )
            for p in points
        ]
        await self._on("upsert", lambda name: self._client.upsert(name, batch, wait=True), write=True)

    async def delete_products(self, product_ids: Sequence[str], from_image: int = 0) -> None:
        if not product_ids:
            return
        flt = build_filter(SearchFilters(), products=product_ids, from_image=from_image)
        assert flt is not None  # a product condition is always there
        selector = models.FilterSelector(filter=flt)
        await self._on(
            "delete",
            lambda name: self._client.delete(name, points_selector=selector, wait=True),
            write=True,
            check=False,
        )

    async def search(
        self,
        queries: Sequence[SpaceQuery],
        filters: SearchFilters,
        limit: int,
        min_similarity: float | None = None,
        exclude: Sequence[str] = (),
    ) -> list[list[PointHit]]:
        flt = build_filter(filters, exclude=exclude)
        vectors = [sq.vector.astype(np.float32).tolist() for sq in queries]

        def batch(name: str) -> Any:
            # Built once the alias is resolved: the search parameters are those of the collection called.
            requests = [
                models.QueryRequest(query=v, using=sq.using.value, filter=flt, limit=limit,
                                    score_threshold=min_similarity, with_payload=list(HIT_FIELDS),
                                    params=self._params[narrows(filters, exclude)])
                for v, sq in zip(vectors, queries, strict=True)
            ]  # fmt: skip
            return self._client.query_batch_points(name, requests)

        results = await self._on("search", batch)
        return [
            [hit_of(p.payload, p.score, sq.using) for p in r.points] for sq, r in zip(queries, results, strict=True)
        ]

    async def product_vectors(self, product_id: str) -> dict[Modality, list[np.ndarray]]:
        return (await self.vectors_of([product_id])).get(product_id, {})

    async def vectors_of(
        self, product_ids: Sequence[str], check: bool = True
    ) -> dict[str, dict[Modality, list[np.ndarray]]]:
        flt, limit = build_filter(SearchFilters(), products=product_ids), MAX_IMAGES * max(1, len(product_ids))
        records, _ = await self._on(
            "scroll",
            lambda name: self._client.scroll(
                name, scroll_filter=flt, limit=limit, with_payload=True, with_vectors=True
            ),
            check=check,
        )
        return vectors_by_product(records)

    async def product_ids(self) -> set[str]:
        async def scroll_all(name: str) -> set[str]:
            ids: set[str] = set()
            offset = None
            while True:
                records, offset = await self._client.scroll(
                    name, limit=2048, offset=offset, with_payload=["product_id"], with_vectors=False
                )
                ids.update(str((r.payload or {}).get("product_id")) for r in records)
                if offset is None:
                    return ids

        return await self._on("scroll", scroll_all, check=False)

    async def info(self) -> IndexInfo:
        points = await self._on("count", lambda name: self._client.count(name, exact=True), write=True, check=False)
        target = self._staged or self._live
        assert target is not None
        async with self._call("collection info"):
            indexed = (await self._client.get_collection(target)).indexed_vectors_count
        return IndexInfo(self.backend, f"{self.alias} → {target}", int(points.count), self._stamp, self._index,
                         None if indexed is None else int(indexed))  # fmt: skip

    def _sharing_client(self, target: str, stamp: ModelStamp) -> ServerIndex:
        """A view on this client that writes to collection ``target`` (the staged re-index)."""
        staged = ServerIndex(self.url, self.alias, client=self._client)
        staged._staged, staged._stamp, staged._expected = target, stamp, stamp
        return staged

    @contextlib.asynccontextmanager
    async def rebuild(self, stamp: ModelStamp, watch: BuildWatch | None = None) -> AsyncIterator[ServerIndex]:
        """Fill a new collection; once the server has indexed it (``watch`` hears how long, every few seconds),
        move the alias to it in one call and drop the old one. A failure or cancel before (an exception from
        ``watch`` too) drops the new collection."""
        name = f"{self.alias}_{uuid.uuid4().hex[:12]}"
        async with self._call("create collection"):
            await self._create_collection(name, stamp, bulk=True)
            old = await self._alias_target()
        staged = self._sharing_client(name, stamp)
        try:
            yield staged
            await self._index_now(name, stamp, watch)
        except BaseException:
            async with self._call("drop staged collection"):
                await self._client.delete_collection(name)
            raise
        ops: list[Any] = [
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias))
        ]
        if old is not None:
            ops.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        async with self._call("swap alias"):
            await self._client.update_collection_aliases(change_aliases_operations=ops)
            self._expected = stamp
            await self._resolve()
            if old is not None:
                await self._client.delete_collection(old)

    async def _index_now(self, name: str, stamp: ModelStamp, watch: BuildWatch | None = None) -> None:
        """Turn indexing on for a bulk-filled collection and wait until the server has built it (status green),
        so the swap never puts an unindexed collection live."""
        if self.spec is None or self.backend == "qdrant-local":
            return
        kb = self.spec.threshold_kb(stamp.dim)
        optimizers = models.OptimizersConfigDiff(indexing_threshold=kb)
        async with self._call("build index"):
            await self._client.update_collection(name, optimizers_config=optimizers)
            points = (await self._client.count(name, exact=True)).count
        # A remote state, polled: a graph of millions of vectors takes minutes. Bounded by a generous rate
        # (2,000 vectors/s per space); red (an optimizer error) fails the re-index at once; grey (optimizers
        # idle after a server restart) is nudged again. ``watch`` (the caller's, not Qdrant's) runs outside
        # _call, so its own errors keep their names.
        start = time.monotonic()
        deadline = start + 600 + points / 1000
        while time.monotonic() < deadline:
            if watch is not None:  # every poll (1 s)
                await watch(time.monotonic() - start)
            async with self._call("build index"):
                info = await self._client.get_collection(name)
                if info.status == models.CollectionStatus.GREY:
                    await self._client.update_collection(name, optimizers_config=optimizers)
            if info.status == models.CollectionStatus.GREEN:
                return
            if info.status == models.CollectionStatus.RED:
                raise StoreUnavailable(f"Qdrant at {self.url}: building the index of {name} failed "
                                       f"({info.optimizer_status})")  # fmt: skip
            await asyncio.sleep(1.0)
        raise StoreUnavailable(f"Qdrant at {self.url}: the index of {name} was not built in time; re-index again")

    async def drop(self) -> None:
        """Delete this alias and the collection it names, and close the handle."""
        async with self._call("drop collection"):
            target = await self._alias_target()
            if target is not None:
                await self._client.update_collection_aliases(change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias))])  # fmt: skip
                await self._client.delete_collection(target)
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()
