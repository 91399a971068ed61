"""Development-only routes (absent when ``PIPELINE__ENVIRONMENT=production``)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from pipeline.api.auth import AdminKey
from pipeline.api.deps import ServiceDep
from pipeline.api.errors import documented

router = APIRouter(prefix="/v1/dev", tags=["development"])


class ResetResult(BaseModel):
    deleted: int


@router.post("/reset", responses=documented(401, 403, 503))
async def reset(svc: ServiceDep, _: AdminKey) -> ResetResult:
    """Delete every product (MongoDB and the index) and empty the query cache: start the demo afresh."""
    deleted = 0
    while ids := await svc.stack.mongo.list_ids(None, 1000):
        gone, _unknown = await svc.stack.ingest.delete(ids)
        if not gone:  # listed but not deletable: stop rather than loop
            break
        deleted += len(gone)
    svc.stack.cache.clear()
    return ResetResult(deleted=deleted)
