"""Score candidates against a query with no index involved (what a similarity API's ``/predict`` does)."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter

from pipeline.api.auth import SearchKey
from pipeline.api.deps import ServiceDep
from pipeline.api.errors import documented
from pipeline.api.fetch import check_url
from pipeline.encoders.base import encode_queries
from pipeline.errors import InvalidInput
from pipeline.preprocess import check_text
from pipeline.wire import Ranked, RankRequest, RankResponse

router = APIRouter(prefix="/v1", tags=["rank"])


@router.post("/rank", responses=documented(401, 403, 413, 422, 503))
async def rank(body: RankRequest, svc: ServiceDep, _: SearchKey) -> RankResponse:
    """The candidate texts ordered by cosine similarity to the query text or photo, best first."""
    start = time.perf_counter()
    stack = svc.stack
    encoder = stack.gen.encoder  # one generation's model for the query and the candidates alike
    short = stack.search.query_limits
    candidates = [check_text(c, short, name=f"candidates[{i}]") for i, c in enumerate(body.candidates)]
    if body.query is not None:
        query = (await encode_queries(encoder, [check_text(body.query, short, name="query")]))[0]
    else:
        data = await stack.ingest.load_image(check_url(str(body.query_image_url)), svc.urls)
        try:
            query = (await encoder.encode_images([data]))[0]
        except InvalidInput as exc:
            raise InvalidInput(str(exc).replace("image 0:", "query image:", 1)) from exc
    vectors = await encode_queries(encoder, candidates)  # each text by its tower (CLIP's, or the multilingual)
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")
    ranked = [Ranked(index=int(i), candidate=candidates[i], similarity=float(scores[i])) for i in order]
    took = round((time.perf_counter() - start) * 1000, 3)
    return RankResponse(ranked=ranked, took_ms=took, model=encoder.info.model)
