"""Where jobs run: inside the service (:class:`LocalRunner`, one job at a time, beside the queries it serves),
on Celery workers (:class:`pipeline.jobs.celery_app.CeleryRunner` queues them, :mod:`pipeline.jobs.worker`
runs them), or in the foreground of the CLI when no service runs (:func:`run_foreground`). Either way the
record lives in MongoDB and the same kind functions do the work (:func:`execute`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from pipeline import aio
from pipeline.errors import Busy, PipelineError, StoreUnavailable
from pipeline.jobs.kinds import Cancelled, JobContext, ProgressHook, run_job
from pipeline.jobs.model import RESUMABLE, Job, JobKind, JobState
from pipeline.jobs.store import JobStore, this_process

if TYPE_CHECKING:
    from pipeline.stack import Stack

log = logging.getLogger("pipeline.jobs")


async def execute(ctx: JobContext, hand_back: bool = True) -> Job:
    """Run a claimed job to its end and record how it ended. With ``hand_back`` (a runner), a shutdown or a
    re-index holding the collection past the write wait puts a resumable job back in the queue; without (the
    CLI's foreground), a stop leaves it interrupted: nobody should run it later unasked."""
    store, job = ctx.store, ctx.job
    resumable = hand_back and job.kind in RESUMABLE

    async def beat() -> None:
        while True:
            await asyncio.sleep(store.heartbeat_s)
            try:
                await store.beat(job.id)
            except StoreUnavailable as exc:  # missed beats are retried; a swallowed cancellation is not missed
                if aio.cancelling():
                    raise asyncio.CancelledError from exc

    async def run() -> dict[str, Any]:
        try:
            return await run_job(ctx)
        except PipelineError as exc:  # a driver call swallowed the shutdown: hand the job back, not FAILED
            if aio.cancelling():
                raise asyncio.CancelledError from exc
            raise

    beating = asyncio.create_task(beat(), name=f"job {job.id} heartbeat")
    try:
        result = await run()
        await store.finish(job.id, JobState.SUCCEEDED, result=result)
    except Cancelled as exc:
        await store.finish(job.id, JobState.CANCELLED, str(exc))
    except Busy as exc:
        if resumable:
            await store.finish(job.id, JobState.QUEUED, f"{exc}; queued again, resumes where it stopped")
        else:
            await store.finish(job.id, JobState.FAILED, str(exc))
    except PipelineError as exc:
        await store.finish(job.id, JobState.FAILED, str(exc))
    except asyncio.CancelledError:  # the process is stopping under the job
        with contextlib.suppress(PipelineError):
            if resumable:
                await store.finish(job.id, JobState.QUEUED, "interrupted by a shutdown; resumes where it stopped")
            else:
                await store.finish(job.id, JobState.INTERRUPTED, "interrupted: submit it again to finish it")
        raise
    except Exception as exc:  # a bug: the job fails with a short reason, the traceback goes to the log
        log.exception("job %s (%s) failed", job.id, job.kind)
        await store.finish(job.id, JobState.FAILED, f"internal error ({type(exc).__name__}); see the service log")
    finally:
        await aio.stop(beating)
    return await store.get(job.id)


class JobRunner(Protocol):
    """What the service needs of a runner: started and closed with it, told of each job it records."""

    async def start(self) -> None: ...

    async def submit(self, job: Job) -> None:
        """A job was recorded (queued); raises StoreUnavailable when it cannot be queued."""

    async def aclose(self) -> None: ...


class LocalRunner:
    """Jobs inside the service process: the oldest queued job first, one at a time."""

    def __init__(self, stack: Stack, store: JobStore, http: httpx.AsyncClient, poll_s: float = 2.0) -> None:
        self.stack, self.store, self.http, self.poll_s = stack, store, http, poll_s
        self.owner = this_process()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Recover jobs a stopped process left running (resuming what can resume), then start working."""
        try:
            for job in await self.store.recover():
                log.warning("job %s (%s) was interrupted; now %s", job.id, job.kind, job.state)
        except StoreUnavailable as exc:
            log.warning("jobs: cannot recover interrupted jobs now: %s", exc)
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    async def submit(self, job: Job) -> None:
        self.wake()

    def wake(self) -> None:
        """A job was submitted: look now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        # The flag, not only the cancellation: a driver call may turn a cancellation into its own error.
        while not self._closing:
            try:
                job = await self.store.claim(self.owner)
            except StoreUnavailable as exc:
                log.warning("jobs: %s", exc)
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                continue
            log.info("job %s (%s) started", job.id, job.kind)
            try:
                done = await execute(JobContext(self.stack, self.store, job, self.http, local=job.local))
            except PipelineError as exc:  # MongoDB gone while recording the end: the next restart recovers it
                log.warning("job %s (%s): cannot record its end: %s", job.id, job.kind, exc)
                continue
            log.info("job %s (%s) %s", job.id, job.kind, done.state)
            if done.state is JobState.QUEUED:  # handed back (a re-index elsewhere holds the collection)
                await asyncio.sleep(self.poll_s)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            await aio.stop(self._task, grace_s=30.0, every_s=5.0)  # a running job records its hand-back first
            self._task = None


async def run_foreground(
    stack: Stack, store: JobStore, kind: JobKind, params: dict[str, Any], on_progress: ProgressHook | None = None
) -> Job:
    """The CLI with no service: the job is recorded like any other and run here, now."""
    job = await store.create(kind, params, by="cli", local=True)
    await store.start_foreground(job.id, this_process())
    job = await store.get(job.id)
    return await execute(JobContext(stack, store, job, stack.ingest.http, on_progress, local=True), hand_back=False)
