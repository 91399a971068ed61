"""``python -m pipeline worker``: a Celery worker that runs jobs with the same code as the service's own runner.

**One job at a time, on Celery's ``solo`` pool.** The stack (an encoder that already keeps every core busy,
async MongoDB and Qdrant clients bound to one event loop, the event log's task) is opened once, in an asyncio
loop on a thread of its own that lives as long as the worker; each task hands its job to that loop and waits.
A prefork pool would need a stack per child (a model copy each, and Qdrant Edge allows one owner per folder),
and a threads pool would run several jobs against one encoder for no gain. Scale out with more workers.

**Delivery.** Redis delivers a message at least once (``acks_late``: acknowledged only once its job has
ended, so a worker that dies before claiming it leaves it to be delivered again); the claim in MongoDB makes
it run at most once at a time (a message for a job that is running elsewhere, ended or unknown does nothing).
A worker killed under a job leaves the record running with no heartbeat: every worker runs
:meth:`JobStore.recover` when it is ready (and every ``PIPELINE__JOBS__RECOVER_S`` after, for jobs silent ``SILENT_S``),
which queues such a job again (resumable kinds go on from their checkpoint) and publishes it. When ready, a
worker also publishes every queued job, so a job whose message was lost (Redis restarted without
persistence) still runs; a running worker does the same for jobs queued longer than
``PIPELINE__JOBS__LOST_MESSAGE_S`` while Redis's queue is empty (with one message prefetched per worker and
acknowledged only at the end, a waiting job's message stays in that list until a worker takes it, so an empty
list beside an old queued job means its message is gone).

**Stopping.** SIGTERM (a warm shutdown) stops the running job at once: it is handed back (queued again and
published: a resumable job goes on elsewhere from its checkpoint; a re-index is left ``interrupted``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from pipeline import aio
from pipeline.errors import PipelineError, StoreUnavailable
from pipeline.jobs.celery_app import PUBLISH_TIMEOUT_S, QUEUE, TASK, check_celery, create_celery, enqueue
from pipeline.jobs.context import JobContext
from pipeline.jobs.model import JobState
from pipeline.jobs.runner import execute
from pipeline.jobs.store import JobStore, this_process

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.stack import Stack

log = logging.getLogger("pipeline.jobs")

# A running worker takes a job for dead only after this long without a heartbeat: a MongoDB outage stops
# heartbeats too, and a live job taken for dead would run twice. A starting worker, like the service's own
# runner, waits three heartbeats (15 s): a process it replaces has usually just died.
SILENT_S = 90.0
RETRY_S = 2.0  # a job handed back because a re-index holds the collection is published again after this
_HAND_BACK_S = 30.0  # how long a cold shutdown waits for the running job to be handed back
_SWEEP_LIMIT = 500


class JobWorker:
    """The stack of one worker process, held open in its own event loop, and the task body that runs a job."""

    def __init__(self, settings: Settings, http: Callable[[], httpx.AsyncClient]) -> None:
        self.settings, self._new_http = settings, http
        self.app = create_celery(settings)
        self.owner = this_process()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="jobs-loop", daemon=True)
        self._held: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._stack: Stack | None = None
        self._http: httpx.AsyncClient | None = None
        self._current: asyncio.Task[Any] | None = None
        self._stopping = False

        @self.app.task(name=TASK)
        def run_job(job_id: str) -> str:
            return self.run(job_id)

    # --- the loop thread: open, hold, close ------------------------------------------------------------------

    def open(self) -> None:
        """Open the stack in the worker's loop; raises what opening it raised."""
        from celery import signals

        self._thread.start()
        opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._held = asyncio.run_coroutine_threadsafe(self._hold(opened), self.loop)
        concurrent.futures.wait([opened, self._held], return_when=concurrent.futures.FIRST_COMPLETED)
        if self._held.done():
            self._held.result()  # the stack could not be opened: say why
        signals.worker_ready.connect(self._on_ready, weak=False)
        signals.worker_shutting_down.connect(self._on_shutdown, weak=False)

    async def _hold(self, opened: concurrent.futures.Future[None]) -> None:
        from pipeline.stack import open_stack

        self._stop = asyncio.Event()
        async with open_stack(self.settings) as stack, self._new_http() as http:
            self._stack, self._http = stack, http
            opened.set_result(None)
            recovering = asyncio.create_task(self._recover_every(), name="jobs-recover")
            try:
                await self._stop.wait()
            finally:
                await aio.stop(recovering)

    def close(self) -> None:
        """Close the stack and stop the loop (after the Celery worker has stopped)."""
        if self._held is not None:
            if self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
            with contextlib.suppress(Exception):
                self._held.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()

    @property
    def stack(self) -> Stack:
        assert self._stack is not None, "the worker's stack is not open"
        return self._stack

    # --- recovery -------------------------------------------------------------------------------------------

    async def _publish(self, job_id: str) -> None:
        try:
            await enqueue(self.app, job_id)
            await self.stack.jobs.mark_published(job_id)
        except StoreUnavailable as exc:  # the record stays queued: the next worker to start publishes it
            log.warning("job %s is queued but could not be published: %s", job_id, exc)

    async def recover(self, sweep: bool) -> None:
        """Queue again the jobs whose process died (publishing them); with ``sweep``, publish every queued job."""
        store = self.stack.jobs if sweep else JobStore(self.stack.mongo.jobs, heartbeat_s=SILENT_S / 3)
        queued = []
        for job in await store.recover():
            log.warning("job %s (%s) was interrupted; now %s", job.id, job.kind, job.state)
            if job.state is JobState.QUEUED:
                queued.append(job.id)
        if sweep:  # oldest first; a job that already has its message only gets a second, which does nothing
            queued += [j.id for j in reversed(await store.recent(JobState.QUEUED, _SWEEP_LIMIT))]
        for job_id in dict.fromkeys(queued):
            await self._publish(job_id)

    async def lost(self) -> list[str]:
        """Queued jobs whose message is gone: last published over ``lost_message_s`` ago while Redis's queue
        is empty (see the module's docstring); each taken by this worker alone (:meth:`JobStore.take_lost`)."""
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            if await asyncio.to_thread(self._queue_length):
                return []
        before = datetime.now(UTC) - timedelta(seconds=self.settings.jobs.lost_message_s)
        return await self.stack.jobs.take_lost(before, _SWEEP_LIMIT)

    def _queue_length(self) -> int:
        with self.app.connection_for_read() as conn:
            return int(conn.default_channel.client.llen(QUEUE))

    async def _recover_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.jobs.recover_s)
            try:
                await self.recover(sweep=False)
                for job_id in await self.lost():
                    log.warning("job %s has been queued with no message in Redis: publishing it again", job_id)
                    await self._publish(job_id)
            except (StoreUnavailable, TimeoutError, KombuError, RedisError, OSError) as exc:
                if aio.cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("jobs: cannot look for interrupted jobs or lost messages now: %s", exc)

    def _on_ready(self, **_: Any) -> None:
        """Celery's worker_ready (connected to Redis): recover and publish what waits, before the first task."""
        try:
            asyncio.run_coroutine_threadsafe(self.recover(sweep=True), self.loop).result(timeout=60)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("jobs: cannot recover interrupted jobs now: %s", exc)

    def _on_shutdown(self, **_: Any) -> None:
        """Celery's worker_shutting_down (in the signal handler): hand the running job back at once."""
        self._stopping = True
        self.loop.call_soon_threadsafe(self._cancel_current)

    def _cancel_current(self) -> None:
        if self._current is not None:
            self._current.cancel()

    # --- one task -------------------------------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """The task body (Celery's thread): run job ``job_id`` in the worker's loop; returns how it went."""
        future = asyncio.run_coroutine_threadsafe(self._run(job_id), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            return "handed back (the worker is stopping)"
        except BaseException:  # a cold shutdown raised here by a signal: hand the job back before going
            self.loop.call_soon_threadsafe(self._cancel_current)
            with contextlib.suppress(BaseException):
                future.result(timeout=_HAND_BACK_S)
            raise

    async def _run(self, job_id: str) -> str:
        if self._stopping:  # delivered as the worker stops: leave it (and its message) to another worker
            await self._publish(job_id)
            return "left to another worker"
        self._current = asyncio.current_task()
        stack = self.stack
        try:
            try:
                job = await stack.jobs.claim(self.owner, job_id)
            except asyncio.CancelledError:  # stopping before the job started: leave it to another worker
                await self._publish(job_id)
                raise
            if job is None:
                log.info("job %s: nothing to do (running elsewhere, ended, or unknown)", job_id)
                return "nothing to do"
            log.info("job %s (%s) started", job.id, job.kind)
            assert self._http is not None
            try:
                done = await execute(JobContext(stack, stack.jobs, job, self._http, local=job.local))
            except asyncio.CancelledError:  # the worker is stopping; execute recorded the hand-back
                with contextlib.suppress(PipelineError):
                    if (await stack.jobs.get(job.id)).state is JobState.QUEUED:
                        await self._publish(job.id)
                raise
            except PipelineError as exc:  # MongoDB gone while recording the end: a later recover() sees to it
                log.warning("job %s (%s): cannot record its end: %s", job.id, job.kind, exc)
                return "end not recorded"
            log.info("job %s (%s) %s", job.id, job.kind, done.state)
            if done.state is JobState.QUEUED:  # handed back: a re-index elsewhere holds the collection
                await asyncio.sleep(RETRY_S)
                await self._publish(job.id)
            return str(done.state)
        finally:
            self._current = None


def run_worker(settings: Settings, http: Callable[[], httpx.AsyncClient], loglevel: str = "INFO") -> int:
    """Run a worker until it is stopped (SIGTERM, Ctrl-C); returns its exit code. Raises PipelineError when
    the settings cannot work or the stack cannot be opened."""
    check_celery(settings)
    if settings.jobs.runner != "celery":
        log.warning("PIPELINE__JOBS__RUNNER is %s: the service runs jobs itself and sends none here",
                    settings.jobs.runner)  # fmt: skip
    from celery.exceptions import CPendingDeprecationWarning

    # Keeping a running job through a broker reconnect is this worker's choice (see create_celery), not an
    # oversight for Celery to warn about at every reconnect.
    warnings.filterwarnings("ignore", "(?s).*worker_cancel_long_running_tasks_on_connection_loss",
                            CPendingDeprecationWarning)  # fmt: skip
    jobs = JobWorker(settings, http)
    celery_worker = jobs.app.Worker(
        hostname=f"jobs-{os.getpid()}@{socket.gethostname()}",
        pool="solo",  # one job at a time, in the worker's own loop (see the module's docstring)
        concurrency=1,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
    )  # sets up logging
    if loglevel != "DEBUG":  # otherwise a line per image a bulk ingest fetches, URLs and all
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        jobs.open()
        celery_worker.start()
    finally:
        jobs.close()
    return int(celery_worker.exitcode or 0)
