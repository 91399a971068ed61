"""What a job is: its kind and parameters, its state, progress and outcome, as stored and as sent."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.schemas import ProductId


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process stopped under it; resumable kinds are queued again on restart


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobKind(StrEnum):
    INGEST = "ingest"  # a catalog file on the server, or an http(s) catalog URL
    EMBED = "embed"  # products by id: generate or update their vectors
    EMBED_ALL = "embed-all"  # every product, in id order
    DELETE = "delete"  # products by id
    REINDEX = "reindex"  # a new collection with the current model, swapped in atomically


# Kinds that pick up where they stopped after an interruption (the rest stay interrupted: submit them again).
RESUMABLE = frozenset({JobKind.INGEST, JobKind.EMBED, JobKind.EMBED_ALL, JobKind.DELETE})


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Params):
    path: str | None = Field(default=None, description="A catalog file on the service's machine (admin keys)")
    url: str | None = Field(default=None, description="An http(s) URL of a catalog file")

    @model_validator(mode="after")
    def _one_source(self) -> IngestParams:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path or url")
        return self


class IdsParams(_Params):
    ids: Annotated[list[ProductId], Field(min_length=1, max_length=100_000)]
    force: bool = Field(default=False, description="embed: re-embed even products whose vectors are current")


class EmbedAllParams(_Params):
    force: bool = Field(default=False, description="Re-embed even products whose vectors are current")


class NoParams(_Params):
    pass


PARAMS: dict[JobKind, type[_Params]] = {
    JobKind.INGEST: IngestParams,
    JobKind.EMBED: IdsParams,
    JobKind.EMBED_ALL: EmbedAllParams,
    JobKind.DELETE: IdsParams,
    JobKind.REINDEX: NoParams,
}


def checked_params(kind: JobKind, params: dict[str, Any]) -> dict[str, Any]:
    """A kind's parameters validated (raises ValidationError) and as stored: defaults filled in."""
    return PARAMS[kind].model_validate(params).model_dump(mode="json")


class RowError(BaseModel):
    row: int | None = None  # the catalog line (or JSON array position); None when a product id says it
    id: str | None = None
    message: str


class Progress(BaseModel):
    done: int = 0
    total: int | None = None  # None while unknown


class Job(BaseModel):
    """A job as stored in MongoDB (``_id`` = ``id``) and as the API returns it."""

    id: str
    kind: JobKind
    params: dict[str, Any] = {}
    state: JobState = JobState.QUEUED
    progress: Progress = Progress()
    rate_per_s: float | None = None
    eta_s: float | None = None
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    result: dict[str, Any] = {}  # counts so far, then the summary
    errors: list[RowError] = []  # the first ERRORS_KEPT
    error_count: int = 0
    message: str | None = None  # why it failed, was cancelled or interrupted
    submitted_by: str | None = None
    local: bool = False  # submitted by the service machine's own user (may name files there)
    resumed: int = 0  # times it was picked up again after an interruption
    cancel_requested: bool = False

    @property
    def final(self) -> bool:
        return self.state in FINAL


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: JobKind
    params: dict[str, Any] = {}


class JobPage(BaseModel):
    jobs: list[Job]
