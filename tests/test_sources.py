"""Catalog rows as shops write them: JSON arrays, other field names, unknown fields, category paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.catalog import read_catalog
from pipeline.schemas import SearchFilters
from pipeline.stores.vectors import category_levels
from tests.catalogs import draw

# The design card's sample document (../shared/samples/product-metadata.json), copied so the test never skips.
SAMPLE = Path(__file__).parent / "data" / "product-metadata.json"


def test_the_design_cards_sample_document_reads_as_it_is(tmp_path):
    catalog = tmp_path / "product_metadata.json"
    shutil.copy(SAMPLE, catalog)
    rows = list(read_catalog(catalog))
    assert [r.error for r in rows] == [None] * len(rows)
    product = rows[0].product
    sample = json.loads(SAMPLE.read_text())[0]
    assert product.id == sample["id"] and product.images == [sample["image_path"]]
    assert product.category == "Electronics / Audio / Headphones"
    assert product.attributes == {"SKU": sample["SKU"], "text": sample["text"]}
    strict = list(read_catalog(catalog, strict=True))
    assert strict[0].product is None and "unknown fields 'SKU', 'text'" in strict[0].error


def test_field_names_and_image_shapes(tmp_path):
    rows = [
        {"id": "a", "title": "red mug", "image_url": "https://img.example/a.jpg"},
        {"id": "b", "name": "blue mug", "title": "Blue Mug!", "image": ["x.jpg", "y.jpg"]},
        {"id": "c", "name": "green mug", "images": "x.jpg|y.jpg", "specs": {"volume_ml": 300}},
        {"id": "d", "name": "no images"},
        "not an object",
    ]
    catalog = tmp_path / "c.json"
    catalog.write_text(json.dumps(rows, indent=2))
    a, b, c, d, e = read_catalog(catalog)
    assert a.product.name == "red mug" and a.product.images == ["https://img.example/a.jpg"]
    assert b.product.name == "blue mug" and b.product.attributes == {"title": "Blue Mug!"}
    assert b.product.images == [str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")]
    assert len(c.product.images) == 2 and c.product.attributes == {"specs": '{"volume_ml": 300}'}
    assert (d.line, d.product) == (4, None) and "images" in d.error  # position in the array, with the reason
    assert (e.line, e.error) == (5, "a row must be a JSON object")


def test_a_broken_json_array_is_one_clear_error(tmp_path):
    from pipeline.errors import InvalidInput

    catalog = tmp_path / "c.json"
    catalog.write_text('[{"id": "a",\n  "name": }]')
    with pytest.raises(InvalidInput, match="invalid JSON at line 2"):
        list(read_catalog(catalog))


def test_category_paths_filter_by_any_level():
    assert category_levels("Electronics / Audio / Headphones") == [
        "Electronics / Audio / Headphones", "Electronics", "Audio", "Headphones", "Electronics / Audio"
    ]  # fmt: skip
    assert category_levels("Home > Kitchen") == ["Home > Kitchen", "Home", "Kitchen"]
    assert category_levels("mug") == ["mug"]


async def test_sample_shaped_catalog_ingests_and_filters_by_category_level(stack, tmp_path):
    image = tmp_path / "headphones.jpg"
    draw("yellow", "poster", 3).save(image)
    rows = [
        {"id": "1", "SKU": "SKU-1", "name": "Sony headphones", "category": "Electronics / Audio / Headphones",
         "image_path": str(image), "text": "long text"},
        {"id": "2", "SKU": "SKU-2", "name": "Desk lamp", "category": "Home / Lighting", "image_path": str(image)},
    ]  # fmt: skip
    catalog = tmp_path / "product_metadata.json"
    catalog.write_text(json.dumps(rows))
    report = await stack.ingest.ingest(catalog)
    assert (report.added, report.rejected) == (2, [])
    for level, expected in (("Audio", ["1"]), ("Electronics / Audio / Headphones", ["1"]), ("Home", ["2"])):
        hits = (await stack.search.search_text("headphones", filters=SearchFilters(category=level))).hits
        assert [h.product_id for h in hits] == expected, level
    stored = (await stack.mongo.get_products(["1"]))["1"]
    assert stored.category == "Electronics / Audio / Headphones" and stored.attributes["SKU"] == "SKU-1"
