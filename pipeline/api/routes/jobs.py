"""Background jobs: submit bulk work, follow its progress, cancel it. Records live in MongoDB, so any replica
answers for any job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import ValidationError

from pipeline.api.auth import Principal, WriteKey
from pipeline.api.deps import ServiceDep, only_params
from pipeline.api.errors import documented
from pipeline.errors import Forbidden, InvalidInput
from pipeline.jobs.model import Job, JobIn, JobKind, JobPage, JobState, checked_params, needs_admin, shown_params
from pipeline.schemas import describe_errors
from pipeline.stores.keys import Scope

router = APIRouter(prefix="/v1", tags=["jobs"])


def _needs_admin(kind: JobKind, params: dict[str, Any]) -> bool:
    return needs_admin(kind, params)


def _as_seen_by(job: Job, who: Principal) -> Job:
    """Server file paths are for admin keys' eyes only; database passwords for nobody's."""
    return job.model_copy(update={"params": shown_params(job.params, who.scope.covers(Scope.ADMIN))})


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, responses=documented(401, 403, 413, 422, 503))
async def submit(body: JobIn, svc: ServiceDep, who: WriteKey) -> Job:
    """Queue a job (``ingest``, ``sync``, ``embed``, ``embed-all``, ``delete``, ``reindex``); it runs in the
    background, one at a time (in the service, or on Celery workers). Poll ``GET /v1/jobs/{id}``. 503 when the
    job queue (Redis, with Celery workers) cannot take it: the job is then recorded as failed, never queued."""
    try:
        params = checked_params(body.kind, body.params)
    except ValidationError as exc:
        raise InvalidInput(f"params: {describe_errors(exc.errors(), whole='params')}") from None
    if _needs_admin(body.kind, params) and not who.scope.covers(Scope.ADMIN):
        raise Forbidden(f"key {who.name!r} has scope {who.scope}; a {body.kind} job of this kind needs admin")
    job = await svc.stack.jobs.create(body.kind, params, who.name, local=who.local)
    await svc.runner.submit(job)
    return _as_seen_by(job, who)


@router.get("/jobs/{job_id}", responses=documented(401, 403, 404, 503))
async def get_job(job_id: str, svc: ServiceDep, who: WriteKey) -> Job:
    """State, progress (done/total, rate, ETA), timestamps, result so far, errors with their rows."""
    return _as_seen_by(await svc.stack.jobs.get(job_id), who)


@router.get("/jobs", responses=documented(401, 403, 422, 503), dependencies=[Depends(only_params("state", "limit"))])
async def list_jobs(
    svc: ServiceDep,
    who: WriteKey,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    """The most recent jobs first, optionally of one state (without their id lists and errors: GET one)."""
    return JobPage(jobs=[_as_seen_by(j, who) for j in await svc.stack.jobs.recent(state, limit)])


@router.delete("/jobs/{job_id}", status_code=status.HTTP_202_ACCEPTED, responses=documented(401, 403, 404, 409, 503))
async def cancel_job(job_id: str, svc: ServiceDep, who: WriteKey) -> Job:
    """Cancel: a queued job at once, a running one after its current batch (nothing half-written)."""
    job = await svc.stack.jobs.get(job_id)
    if _needs_admin(job.kind, job.params) and not who.scope.covers(Scope.ADMIN):
        raise Forbidden(f"key {who.name!r} has scope {who.scope}; cancelling a {job.kind} job of this kind needs admin")
    return _as_seen_by(await svc.stack.jobs.cancel(job_id), who)
