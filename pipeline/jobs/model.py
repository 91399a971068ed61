"""What a job is: its kind and parameters, its state, progress and outcome, as stored and as sent."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.schemas import ProductId
from pipeline.sources.base import SourceSpec, hide_password


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its process stopped under it; resumable kinds are queued again on restart


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobKind(StrEnum):
    INGEST = "ingest"  # a catalog file on the server, an http(s) catalog URL, or a source (SQL, MongoDB)
    SYNC = "sync"  # what changed in a source since the last sync; rows gone from it deleted when asked
    EMBED = "embed"  # products by id: generate or update their vectors
    EMBED_ALL = "embed-all"  # every product, in id order
    DELETE = "delete"  # products by id
    REINDEX = "reindex"  # a new collection with the current model, swapped in atomically
    TRAIN = "train"  # fine-tune a version on the catalog and on clicks; export it as a candidate version
    ACTIVATE = "activate"  # build a version's collection in the background, validate it, switch to it


# Kinds that pick up where they stopped after an interruption (the rest stay interrupted: submit them again).
RESUMABLE = frozenset({JobKind.INGEST, JobKind.SYNC, JobKind.EMBED, JobKind.EMBED_ALL, JobKind.DELETE})


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(_Params):
    path: str | None = Field(default=None, description="A catalog file on the service's machine (admin keys)")
    url: str | None = Field(default=None, description="An http(s) URL of a catalog file")
    source: SourceSpec | Literal["configured"] | None = Field(
        default=None, description='A SQL or MongoDB source (admin keys), or "configured": the service\'s own'
    )

    @model_validator(mode="after")
    def _one_source(self) -> IngestParams:
        if sum(x is not None for x in (self.path, self.url, self.source)) != 1:
            raise ValueError("give exactly one of path, url or source")
        return self


class SyncParams(_Params):
    source: SourceSpec | None = Field(default=None, description="Unset: the configured source (admin keys to name one)")
    delete_missing: bool = Field(default=False, description="Delete products the source no longer has")
    full: bool = Field(default=False, description="Read every row, not only those changed since the last sync")


class IdsParams(_Params):
    ids: Annotated[list[ProductId], Field(min_length=1, max_length=100_000)]
    force: bool = Field(default=False, description="embed: re-embed even products whose vectors are current")


class EmbedAllParams(_Params):
    force: bool = Field(default=False, description="Re-embed even products whose vectors are current")


class NoParams(_Params):
    pass


class TrainParams(_Params):
    base: str | None = Field(default=None, description="The version to fine-tune (default: the active one)")
    checkpoint: str | None = Field(default=None, description="Or a checkpoint folder on the service's machine")
    catalog: bool = Field(default=True, description="Train on the catalog's image-title pairs")
    clicks: bool = Field(default=True, description="Train on pairs mined from shoppers' clicks")
    epochs: int | None = Field(default=None, ge=1, le=1000)
    batch_size: int | None = Field(default=None, ge=2, le=4096)
    lr: float | None = Field(default=None, gt=0, le=1)
    activate: bool = Field(default=False, description="Then build, validate and switch to the candidate")
    force: bool = Field(default=False, description="With activate: switch even when validation refuses it")


class ActivateParams(_Params):
    version: str = Field(min_length=1, max_length=64)
    force: bool = Field(default=False, description="Switch even when validation refuses the candidate")


PARAMS: dict[JobKind, type[_Params]] = {
    JobKind.INGEST: IngestParams,
    JobKind.SYNC: SyncParams,
    JobKind.EMBED: IdsParams,
    JobKind.EMBED_ALL: EmbedAllParams,
    JobKind.DELETE: IdsParams,
    JobKind.REINDEX: NoParams,
    JobKind.TRAIN: TrainParams,
    JobKind.ACTIVATE: ActivateParams,
}


def needs_admin(kind: JobKind, params: dict[str, Any]) -> bool:
    """Kinds, and parameters, only admin keys may submit (or cancel): a re-index, anything naming a file on the
    service's machine or a database to read (a source of the caller's own; the configured one is fine)."""
    named_source = isinstance(params.get("source"), dict)
    admin_kinds = (JobKind.REINDEX, JobKind.TRAIN, JobKind.ACTIVATE)
    return kind in admin_kinds or bool(params.get("path")) or named_source


def shown_params(params: dict[str, Any], admin: bool) -> dict[str, Any]:
    """Parameters as a caller sees them: database passwords never, server file paths for admin keys only."""
    shown = dict(params)
    if shown.get("path") and not admin:
        shown["path"] = "(hidden)"
    source = shown.get("source")
    if isinstance(source, dict) and source.get("url"):
        shown["source"] = {**source, "url": hide_password(source["url"]) if admin else "(hidden)"}
    return shown


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
