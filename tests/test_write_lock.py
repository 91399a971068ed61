"""One writer kind per collection: a re-index never interleaves with product writes (real mongod)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from pipeline.errors import Busy
from pipeline.schemas import Product
from pipeline.stores.write_lock import WriteLock


@pytest.fixture
async def locks(mongo_uri):
    client = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield client[f"t_{uuid.uuid4().hex[:10]}"]["write_locks"]
    await client.close()


async def test_reindex_excludes_writers_across_handles(locks):
    """Two handles on one lock document, as two processes would have."""
    reindexer, writer = WriteLock(locks, "products"), WriteLock(locks, "products")
    async with reindexer.exclusive():
        with pytest.raises(Busy, match="re-index of 'products' is running"):
            async with writer.shared(wait_s=0.2):
                pass
        with pytest.raises(Busy, match="already running"):
            async with writer.exclusive():
                pass
    async with writer.shared(wait_s=0.2), writer.shared(wait_s=0.2):  # writers share
        pass
    assert (await locks.find_one({"_id": "products"}))["writers"] == []  # released, even the nested one


async def test_reindex_waits_for_writers_already_in(locks):
    lock = WriteLock(locks, "products")
    order: list[str] = []
    inside = asyncio.Event()

    async def write() -> None:
        async with lock.shared(wait_s=1):
            order.append("write started")
            inside.set()
            await asyncio.sleep(0.3)
            order.append("write done")

    task = asyncio.create_task(write())
    await inside.wait()
    async with lock.exclusive():
        order.append("reindex")
    await task
    assert order == ["write started", "write done", "reindex"]


async def test_a_dead_holders_lease_expires(locks):
    past = datetime.now(UTC) - timedelta(seconds=1)
    dead = {"token": "dead", "expires": past}
    await locks.insert_one({"_id": "products", "reindex": dead, "writers": [{**dead, "token": "gone"}]})
    lock = WriteLock(locks, "products")
    async with lock.shared(wait_s=0):  # the dead re-index does not block
        pass
    async with lock.exclusive():  # nor does the dead writer
        pass


async def test_writes_during_a_reindex_are_neither_lost_nor_resurrected(stack, catalog, tmp_path, monkeypatch):
    """An ingest and a delete issued while a re-index runs land in the collection that is live afterwards."""
    await stack.ingest.ingest(catalog)
    ids = sorted(await stack.index.product_ids())
    victim = ids[0]
    image = tmp_path / "new.png"
    from tests.catalogs import draw

    draw("red", "mug", 99).save(image)
    newcomer = Product(id="new-during-reindex", name="red mug", images=[str(image)], category="mug")

    batch = stack.ingest._reindex_batch
    running = asyncio.Event()

    async def slowed(*args, **kwargs):
        running.set()
        await asyncio.sleep(0.2)  # keep the re-index running while the writes arrive
        return await batch(*args, **kwargs)

    monkeypatch.setattr(stack.ingest, "_reindex_batch", slowed)
    reindex = asyncio.create_task(stack.ingest.reindex())
    await running.wait()
    outcomes, (deleted, _) = await asyncio.gather(stack.ingest.upsert([newcomer]), stack.ingest.delete([victim]))
    await reindex

    assert outcomes[0].status == "added" and deleted == [victim]
    indexed = await stack.index.product_ids()
    assert "new-during-reindex" in indexed and victim not in indexed
    assert victim not in await stack.mongo.get_products([victim])
    hits = (await stack.search.search_product("new-during-reindex")).hits
    assert victim not in [h.product_id for h in hits]
    assert (await stack.ingest.upsert([newcomer]))[0].status == "unchanged"
