"""``python -m pipeline jobs ...``: submit, list, watch and cancel background jobs.

Through the running service when there is one (the job runs there; ``--wait`` follows it with a progress
bar); with none, ``submit`` runs the job here in the foreground, recorded in MongoDB like any other, and
``list``/``watch``/``cancel`` read MongoDB directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import cli_sources as src
from pipeline.cli_common import JsonOption, RepoOption, app, err, guarded, run_with_stack, settings_for
from pipeline.config import Settings
from pipeline.jobs.model import Job, JobKind, JobState, checked_params

if TYPE_CHECKING:
    from pipeline.client import ServiceClient
    from pipeline.jobs.store import JobStore

jobs_app = typer.Typer(no_args_is_help=True, help="Background jobs: bulk ingest, embed, delete, re-index.")
app.add_typer(jobs_app, name="jobs")
T = TypeVar("T")


def _client(settings: Settings) -> ServiceClient | None:
    from pipeline.client import ServiceClient

    return ServiceClient.discover(settings)


def _with_store(settings: Settings, work: Callable[[JobStore], Awaitable[T]]) -> T:
    """MongoDB only (no model, no index): what reading and cancelling jobs needs when no service runs."""
    from pipeline.jobs.store import JobStore
    from pipeline.stack import open_mongo

    async def run() -> T:
        async with contextlib.AsyncExitStack() as exits:
            mongo, _ = await open_mongo(settings, exits)
            return await work(JobStore(mongo.jobs))

    return asyncio.run(run())


def _bar(quiet: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=err, transient=True, disable=quiet)


def _step(kind: str, result: dict[str, Any]) -> str:
    """The bar's label: the job's kind, and the step of its index build once there (the engine reports no
    progress while it builds the graphs: how long it has run)."""
    phase = result.get("index") if kind != JobKind.REINDEX.value else result
    if not isinstance(phase, dict) or not phase.get("phase"):
        return kind
    seconds = f", {phase['seconds']} s" if phase.get("seconds") is not None else ""
    return f"{kind}: {phase['phase']}{seconds}"


def run_job(settings: Settings, kind: JobKind, params: dict[str, Any], wait: bool = True, quiet: bool = False) -> Job:
    """Submit a job to the service (and follow it when ``wait``), or run it here when no service runs."""
    params = checked_params(kind, params)
    client = _client(settings)
    if client is not None:
        with client:
            job = Job.model_validate(client.post("/v1/jobs", {"kind": kind.value, "params": params}))
            return _follow(client, job.id, kind.value, quiet) if wait else job

    async def work(stack: Any) -> Job:
        from pipeline.jobs.runner import run_foreground

        with _bar(quiet) as bar:
            task = bar.add_task(kind.value, total=None)

            def show(done: int, total: int | None, result: dict[str, Any]) -> None:
                bar.update(task, completed=done, total=total, description=_step(kind.value, result))

            return await run_foreground(stack, stack.jobs, kind, params, show)

    return run_with_stack(settings, work)


def _follow(client: ServiceClient, job_id: str, kind: str, quiet: bool = False) -> Job:
    with _bar(quiet) as bar:
        task = bar.add_task(kind, total=None)
        while True:
            job = Job.model_validate(client.get(f"/v1/jobs/{job_id}"))
            bar.update(task, completed=job.progress.done, total=job.progress.total, description=_step(kind, job.result))
            if job.final or job.state is JobState.INTERRUPTED:
                return job
            time.sleep(0.5)


def _print(job: Job, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(job.model_dump_json() + "\n")
        return
    print_job(job)


def finish_job(job: Job, as_json: bool) -> None:
    """Print a job that ended (JSON or for a person); exit 1 unless it succeeded."""
    if as_json:
        sys.stdout.write(job.model_dump_json() + "\n")
    else:
        print_job(job)
    if job.state is not JobState.SUCCEEDED:
        raise typer.Exit(1)


def print_job(job: Job) -> None:
    """A job's state, counts, message and first errors, for a person."""
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(job.state, "cyan")
    done = f"{job.progress.done}/{job.progress.total if job.progress.total is not None else '?'}"
    err.print(f"job {job.id} ({job.kind}): [{colour}]{job.state}[/{colour}] {done}", highlight=False)
    if job.result:
        err.print("  " + ", ".join(f"{k} {v}" for k, v in job.result.items()), markup=False)
    if job.message:
        err.print(f"  {job.message}", markup=False)
    for e in job.errors[:20]:
        where = f"row {e.row}" if e.row is not None else f"id {e.id}"
        err.print(f"  {where}: {e.message}", markup=False, soft_wrap=True)
    if job.error_count > 20:
        err.print(f"  … and {job.error_count - 20} more (use --json for the first 1000)")


@jobs_app.command("submit")
@guarded
def submit(
    kind: Annotated[JobKind, typer.Argument(help="ingest, sync, embed, embed-all, delete or reindex")],
    path: Annotated[Path | None, typer.Option(help="ingest: a catalog file (.jsonl, .json, .csv)")] = None,
    url: Annotated[str | None, typer.Option(help="ingest: an http(s) catalog URL")] = None,
    ids: Annotated[str | None, typer.Option(help="embed, delete: product ids, comma-separated")] = None,
    force: Annotated[bool, typer.Option(help="embed, embed-all: re-embed even current products")] = False,
    delete_missing: Annotated[bool, typer.Option(help="sync: delete products the source no longer has")] = False,
    full: Annotated[bool, typer.Option(help="sync: read every row, not only those changed since the last")] = False,
    sql_url: src.SqlUrl = None,
    query: src.Query = None,
    by_id_query: src.ByIdQuery = None,
    mongo_url: src.MongoUrl = None,
    database: src.Database = None,
    collection: src.Collection = None,
    filter_json: src.Filter = None,
    mapping: src.Mapping = None,
    updated_at: src.UpdatedAt = None,
    image_base: src.ImageBase = None,
    source_name: src.SourceName = None,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end (through a service)")] = True,
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a job. With no service running, it runs here and now. ``ingest`` and ``sync`` read a source
    named by the options (--sql-url/--mongo-url ...); a ``sync`` without one reads the configured source."""
    source = src.source_param(sql_url, query, by_id_query, mongo_url, database, collection, filter_json, mapping,
                              updated_at, image_base, source_name)  # fmt: skip
    given: dict[str, Any] = {
        "path": str(path.resolve()) if path else None,
        "url": url,
        "source": source,
        "ids": [i for i in (ids or "").split(",") if i] or None,
        "force": force or None,
        "delete_missing": delete_missing or None,
        "full": full or None,
    }
    job = run_job(settings_for(model_repository), kind, {k: v for k, v in given.items() if v is not None}, wait,
                  as_json)  # fmt: skip
    _print(job, as_json)
    if job.state is JobState.FAILED:
        raise typer.Exit(1)


@jobs_app.command("list")
@guarded
def list_jobs(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """The most recent jobs."""
    settings = settings_for(model_repository)
    client = _client(settings)
    if client is not None:
        with client:
            query = {"limit": limit, **({"state": state.value} if state else {})}
            jobs = [Job.model_validate(j) for j in client.get("/v1/jobs", **query)["jobs"]]
    else:
        jobs = _with_store(settings, lambda store: store.recent(state, limit))
    if as_json:
        sys.stdout.write(json.dumps([j.model_dump(mode="json") for j in jobs]) + "\n")
        return
    for job in jobs:
        total = job.progress.total if job.progress.total is not None else "?"
        err.print(
            f"{job.id}  {job.kind:<9} {job.state:<11} {job.progress.done}/{total}  {job.created:%Y-%m-%d %H:%M:%S}"
            f"  {escape(job.message or '')}",
            highlight=False,
        )


@jobs_app.command("watch")
@guarded
def watch(job_id: str, model_repository: RepoOption = None, as_json: JsonOption = False) -> None:
    """Follow a job with a live progress bar until it ends."""
    settings = settings_for(model_repository)
    client = _client(settings)
    if client is not None:
        with client:
            job = Job.model_validate(client.get(f"/v1/jobs/{job_id}"))
            job = _follow(client, job_id, job.kind.value, as_json)
    else:

        async def poll(store: JobStore) -> Job:
            job = await store.get(job_id)
            while not job.final and job.state is not JobState.INTERRUPTED:
                await asyncio.sleep(0.5)
                job = await store.get(job_id)
            return job

        job = _with_store(settings, poll)
    _print(job, as_json)


@jobs_app.command("cancel")
@guarded
def cancel(job_id: str, model_repository: RepoOption = None, as_json: JsonOption = False) -> None:
    """Cancel a job: a queued one at once, a running one after its current batch."""
    settings = settings_for(model_repository)
    client = _client(settings)
    if client is not None:
        with client:
            job = Job.model_validate(client.remove(f"/v1/jobs/{job_id}"))
    else:
        job = _with_store(settings, lambda store: store.cancel(job_id))
    _print(job, as_json)
