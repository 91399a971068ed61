"""Model versions: the registry, activation (a job: shadow build, validation, switch) and retirement."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path as PathLib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from pipeline.api.auth import AdminKey, Principal, SearchKey
from pipeline.api.deps import ServiceDep
from pipeline.api.errors import documented
from pipeline.errors import Forbidden, StoreUnavailable
from pipeline.jobs.model import Job, JobKind, checked_params
from pipeline.lifecycle.activate import add_version, retire
from pipeline.lifecycle.monitor import generation_figures
from pipeline.lifecycle.registry import ModelVersion
from pipeline.stores.keys import Scope

router = APIRouter(prefix="/v1", tags=["models"])
Version = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^v[0-9]+$")]


class ModelsOut(BaseModel):
    active: str = Field(description="The version whose generation this service answers with now")
    versions: list[ModelVersion]
    live: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per generation, from the logs: queries, mean top-1 similarity, CTR@k"
    )


def _as_seen_by(version: ModelVersion, who: Principal) -> ModelVersion:
    """Server file paths are for admin keys' eyes only."""
    if who.scope.covers(Scope.ADMIN):
        return version
    return version.model_copy(
        update={"repository": "(hidden)", "checkpoint": "(hidden)" if version.checkpoint else None}
    )


@router.get("/models", responses=documented(401, 403, 503))
async def list_models(svc: ServiceDep, who: SearchKey) -> ModelsOut:
    """Every model version (candidates with their training and validation figures, the active one, retired
    ones) and live figures per generation."""
    stack = svc.stack
    live: dict[str, Any] = {}
    if svc.live_cache is not None and time.monotonic() - svc.live_cache[0] < 2:
        live = svc.live_cache[1]  # two aggregations over a week of logs: not on every page refresh
    else:
        with contextlib.suppress(StoreUnavailable):
            live = await generation_figures(stack.mongo)
            svc.live_cache = (time.monotonic(), live)
    versions = [_as_seen_by(v, who) for v in await stack.registry.list()]
    return ModelsOut(active=stack.gen.name, versions=versions, live=live)


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: str = Field(min_length=1, description="An exported model repository on the service's machine")
    checkpoint: str | None = Field(default=None, description="The checkpoint it was exported from (to train it)")


@router.post("/models", status_code=status.HTTP_201_CREATED, responses=documented(401, 403, 422, 503))
async def add_model(body: ModelIn, svc: ServiceDep, who: AdminKey) -> ModelVersion:
    """Register an exported repository (``python -m pipeline export``) as a candidate version. It names files
    on the service's machine: the machine's own user only (the service file's token)."""
    if not who.local:
        raise Forbidden("registering a model names files on the service's machine: use the local token")
    return await add_version(svc.stack, PathLib(body.repository), PathLib(body.checkpoint) if body.checkpoint else None)


@router.get("/models/{version}", responses=documented(401, 403, 404, 503))
async def get_model(version: Version, svc: ServiceDep, who: SearchKey) -> ModelVersion:
    return _as_seen_by(await svc.stack.registry.get(version), who)


@router.post("/models/{version}/activate", status_code=status.HTTP_202_ACCEPTED,
             responses=documented(401, 403, 404, 422, 503))  # fmt: skip
async def activate_model(
    version: Version, svc: ServiceDep, who: AdminKey, force: Annotated[bool, Query()] = False
) -> Job:
    """Make a version active, as a job: a candidate's collection is built in the background while the active
    generation serves, then both are measured on held-out queries (refused when worse, unless ``force``), then
    the switch; a version that served before (a rollback) is only caught up, then switched to."""
    await svc.stack.registry.get(version)  # 404 now rather than a failed job
    params = checked_params(JobKind.ACTIVATE, {"version": version, "force": force})
    job = await svc.stack.jobs.create(JobKind.ACTIVATE, params, who.name, local=who.local)
    await svc.runner.submit(job)
    return job


@router.post("/models/{version}/retire", responses=documented(401, 403, 404, 422, 503))
async def retire_model(version: Version, svc: ServiceDep, _: AdminKey) -> ModelVersion:
    """Drop a version's collection (not the active one's); its record stays. Activating it again rebuilds it."""
    return await retire(svc.stack, version)
