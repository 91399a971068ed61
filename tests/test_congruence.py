"""Congruence: the same ingest and queries through Qdrant Edge and qdrant-client's local mode agree."""

from __future__ import annotations

import numpy as np

from pipeline.schemas import SearchFilters
from pipeline.stack import open_stack
from tests.catalogs import draw
from tests.conftest import make_settings
from tests.images import encode

QUERIES = [
    ("text", "red mug", SearchFilters()),
    ("text", "striped blue shirt", SearchFilters(category="shirt")),
    ("text", "poster", SearchFilters(min_price=8, max_price=20, brand="acme")),
    ("image", encode(draw("green", "poster", 7), "JPEG"), SearchFilters()),
    ("image", encode(draw("yellow", "mug", 8), "PNG"), SearchFilters(color="yellow")),
    ("product", "shirt-red-1", SearchFilters()),
    ("product", "mug-blue-0", SearchFilters(category="poster")),
]


async def _answers(settings, catalog):
    out = []
    async with open_stack(settings) as stack:
        await stack.ingest.ingest(catalog)
        for kind, query, filters in QUERIES:
            run = {
                "text": stack.search.search_text,
                "image": stack.search.search_image,
                "product": stack.search.search_product,
            }[kind]
            response = await run(query, top_k=10, filters=filters)
            out.append([(h.product_id, h.similarity, h.matched, h.image_index) for h in response.hits])
    return out


async def test_edge_and_local_mode_agree(model_repository, tmp_path, mongo_uri, catalog):
    edge = await _answers(make_settings(model_repository, "edge", tmp_path / "e", mongo_uri), catalog)
    local = await _answers(make_settings(model_repository, "local", tmp_path / "l", mongo_uri), catalog)
    for (kind, _, _), a, b in zip(QUERIES, edge, local, strict=True):
        assert a, kind
        assert [x[0] for x in a] == [x[0] for x in b], kind
        np.testing.assert_allclose([x[1] for x in a], [x[1] for x in b], atol=1e-5)
        assert [x[2:] for x in a] == [x[2:] for x in b]
