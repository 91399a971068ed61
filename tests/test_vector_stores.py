"""Both vector-index adapters: the model stamp of the collection a call actually reaches, and shard housekeeping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ModelMismatch
from pipeline.schemas import SearchFilters
from pipeline.stores.qdrant_edge import EdgeIndex
from pipeline.stores.qdrant_server import ServerIndex
from pipeline.stores.vectors import ModelStamp, SpaceQuery, VectorPoint
from pipeline.types import Modality

OLD, NEW = ModelStamp("a" * 64, 4, "model-a"), ModelStamp("b" * 64, 4, "model-b")


def _point(product_id: str, vec: np.ndarray) -> VectorPoint:
    return VectorPoint(product_id, 0, vec, vec, {"product_id": product_id, "image_index": 0})


async def test_server_sees_a_reindex_made_by_another_process():
    """Two handles on one server, as a page and a CLI would have: once the other re-indexes with a new model,
    this one's queries and writes are refused instead of mixing the new model's vectors with its old encoder."""
    vec = np.array([1, 0, 0, 0], np.float32)
    page = ServerIndex(":memory:", "products")
    await page.open(OLD)
    await page.upsert([_point("p", vec)])
    query = [SpaceQuery(vec, Modality.IMAGE)]
    assert [h.product_id for h in (await page.search(query, SearchFilters(), 5))[0]] == ["p"]

    cli = ServerIndex(":memory:", "products", client=page._client)
    await cli.open(NEW)  # opens the alias as it is: filled by the old model
    async with cli.rebuild(NEW) as staged:
        await staged.upsert([_point("q", vec)])
    assert [h.product_id for h in (await cli.search(query, SearchFilters(), 5))[0]] == ["q"]

    with pytest.raises(ModelMismatch, match="model-b"):
        await page.search(query, SearchFilters(), 5)
    with pytest.raises(ModelMismatch, match="model-b"):
        await page.upsert([_point("r", vec)])
    await page.aclose()


async def test_server_reads_stay_on_the_checked_collection_until_it_is_dropped():
    """Within the alias cache a read goes to the collection whose stamp was checked (never to whatever the
    alias names now); a dropped collection sends it back to the alias, whose new stamp is then checked."""
    vec = np.array([0, 1, 0, 0], np.float32)
    first = ServerIndex(":memory:", "products")
    await first.open(OLD)
    await first.upsert([_point("p", vec)])
    query = [SpaceQuery(vec, Modality.TEXT)]
    await first.search(query, SearchFilters(), 1)  # caches the alias target
    other = ServerIndex(":memory:", "products", client=first._client)
    await other.open(OLD)
    async with other.rebuild(NEW):
        pass  # swaps the alias and drops the collection `first` last checked
    with pytest.raises(ModelMismatch):
        await first.search(query, SearchFilters(), 1)
    await first.aclose()


async def test_edge_keeps_other_collections_shards(tmp_path):
    """Start-up removes this collection's leftover shards only, not those of `products-eu`."""
    eu = EdgeIndex(tmp_path, "products-eu")
    await eu.open(OLD)
    await eu.upsert([_point("eu-1", np.array([1, 0, 0, 0], np.float32))])
    eu_shard = eu._live.path.name  # type: ignore[union-attr]
    await eu.aclose()
    leftover = tmp_path / "products-0123456789ab"  # an interrupted re-index of `products`
    leftover.mkdir()
    (tmp_path / "products-notes").mkdir()  # not a shard name: not ours to remove

    main = EdgeIndex(tmp_path, "products")
    await main.open(OLD)
    await main.aclose()
    assert (tmp_path / eu_shard).is_dir()
    assert not leftover.exists()
    assert (tmp_path / "products-notes").is_dir()

    eu = EdgeIndex(tmp_path, "products-eu")
    await eu.open(OLD)
    assert (await eu.info()).points == 1
    await eu.aclose()


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_the_titles_tower_is_part_of_the_stamp(adapter, tmp_path):
    """A collection whose titles another tower embedded is refused (the same image model): its stamp keeps the
    tower, and unchecked reads still reach its vectors (a re-index copies the image vectors)."""
    vec = np.array([0, 0, 1, 0], np.float32)
    french = ModelStamp(OLD.fingerprint, OLD.dim, OLD.model, titles="c" * 64)

    def handle(client=None):
        if adapter == "edge":
            return EdgeIndex(tmp_path, "products")
        return ServerIndex(":memory:", "products", client=client)

    first = handle()
    await first.open(french)
    await first.upsert([_point("p", vec)])
    assert (await first.info()).stamp == french
    if adapter == "edge":
        await first.aclose()
    second = handle(None if adapter == "edge" else first._client)
    await second.open(OLD)  # titles by CLIP's tower: not what the collection holds
    with pytest.raises(ModelMismatch, match=r"titles embedded by the multilingual tower cccccccccccc.*reindex"):
        await second.search([SpaceQuery(vec, Modality.TEXT)], SearchFilters(), 1)
    with pytest.raises(ModelMismatch):
        await second.vectors_of(["p"])
    stored = await second.vectors_of(["p"], check=False)
    np.testing.assert_array_equal(stored["p"][Modality.IMAGE][0], vec)
    await second.aclose()
    if adapter != "edge":
        await first.aclose()


async def test_an_edge_collection_from_before_title_towers_reads_as_clip_titles(tmp_path):
    """A pointer written before the stamp had ``titles`` opens as CLIP-embedded titles: an English catalog's
    encoder searches it as before."""
    import json

    vec = np.array([0, 1, 0, 0], np.float32)
    index = EdgeIndex(tmp_path, "products")
    await index.open(OLD)
    await index.upsert([_point("p", vec)])
    await index.aclose()
    pointer = index._pointer()
    record = json.loads(pointer.read_text())
    del record["titles"]
    pointer.write_text(json.dumps(record))
    again = EdgeIndex(tmp_path, "products")
    await again.open(OLD)
    assert (await again.info()).stamp == OLD
    assert [h.product_id for h in (await again.search([SpaceQuery(vec, Modality.TEXT)], SearchFilters(), 1))[0]] == [
        "p"
    ]
    await again.aclose()
