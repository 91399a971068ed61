"""API key administration (admin scope). ``python -m pipeline keys`` uses these when a service runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from pipeline.api.auth import AdminKey
from pipeline.api.deps import ServiceDep, only_params
from pipeline.api.errors import documented
from pipeline.stores.keys import Scope
from pipeline.wire import KeyCreated, KeyIn, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.get("", responses=documented(401, 403, 422, 503), dependencies=[Depends(only_params("include_revoked"))])
async def list_keys(svc: ServiceDep, _: AdminKey, include_revoked: Annotated[bool, Query()] = False) -> list[KeyOut]:
    """Keys by name and scope (never the keys themselves)."""
    return [KeyOut.model_validate(k) for k in await svc.stack.keys.list(include_revoked)]


@router.post("", status_code=201, responses=documented(401, 403, 409, 422, 503))
async def create_key(body: KeyIn, svc: ServiceDep, _: AdminKey) -> KeyCreated:
    """A new key; the answer is the only place the key itself ever appears."""
    record, key = await svc.stack.keys.create(body.name, Scope(body.scope))
    return KeyCreated(**KeyOut.model_validate(record).model_dump(), key=key)


@router.delete("/{name}", responses=documented(401, 403, 404, 422, 503))
async def revoke_key(name: str, svc: ServiceDep, _: AdminKey) -> KeyOut:
    """Revoke a key: it fails on its next request to this service."""
    key_digest, record = await svc.stack.keys.revoke(name)
    svc.auth.forget(key_digest)
    return KeyOut.model_validate(record)
