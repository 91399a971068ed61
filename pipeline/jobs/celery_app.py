"""Jobs on Celery workers through a Redis broker (``PIPELINE__JOBS__RUNNER=celery``): the service's side.

Redis carries only a doorbell: a message holds a job id. The job itself (kind, parameters, state, progress,
checkpoint) is the MongoDB record the service created, so any replica answers for it, and a worker that gets
a message for a job that is already running elsewhere, finished, cancelled or unknown does nothing (the claim
in MongoDB is the only way to run a job). The worker's side is :mod:`pipeline.jobs.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import PipelineError, StoreUnavailable
from pipeline.jobs.model import Job, JobState
from pipeline.jobs.store import JobStore

if TYPE_CHECKING:
    from celery import Celery

    from pipeline.config import Settings

log = logging.getLogger("pipeline.jobs")

TASK = "pipeline.jobs.run"  # the one task: run the job whose id the message carries
QUEUE = "pipeline.jobs"
# A dead or unreachable Redis answers a submission within this many seconds (a 503), not after Celery's
# default retries: one connection attempt of at most 2 s, one retry, and this bound over everything.
PUBLISH_TIMEOUT_S = 5.0
_RETRY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.2}


def shown(url: str) -> str:
    """The broker URL as logs and messages may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def broker_url(settings: Settings) -> str:
    """The Redis URL of the Celery runner; raises PipelineError naming the setting when it is missing or wrong."""
    url = settings.jobs.broker_url.get_secret_value() if settings.jobs.broker_url else ""
    if not url:
        raise PipelineError(
            "the celery job runner needs a broker: set PIPELINE__JOBS__BROKER_URL=redis://HOST:6379/0 "
            "(or PIPELINE__JOBS__RUNNER=local to run jobs inside the service)"
        )
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise PipelineError(f"PIPELINE__JOBS__BROKER_URL={shown(url)}: the job queue is Redis (redis:// or rediss://)")
    return url


def check_celery(settings: Settings, warn: bool = True) -> None:
    """Refuse settings the Celery runner cannot work with (at the start of the service and of a worker).

    Qdrant Edge (the embedded default) has one owner per folder, so the service and its workers share vectors
    only through a Qdrant server: production refuses to run without one; development only warns (each process
    then writes its own Edge folder, which is what the tests do)."""
    broker_url(settings)
    if settings.qdrant.url or not (warn or settings.environment == "production"):
        return
    if settings.environment == "production":
        raise PipelineError(
            "the celery job runner needs a Qdrant server that the service and its workers share: set "
            "PIPELINE__QDRANT__URL (Qdrant Edge, the embedded default, belongs to one process)"
        )
    log.warning(
        "jobs run on Celery workers but no Qdrant server is set (PIPELINE__QDRANT__URL): each process keeps its "
        "own Qdrant Edge folder, so what workers embed is not searchable from the service (development only)"
    )


def create_celery(settings: Settings) -> Celery:
    """A Celery app for these settings (nothing connects until a message is sent or a worker starts)."""
    from celery import Celery

    app = Celery("pipeline", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,  # outcomes live in the job record, not in a result backend
        # A message is acknowledged once its job has ended, so one taken by a worker that dies before claiming
        # the job is delivered again; the claim in MongoDB keeps a second delivery from running it twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one job at a time: the next message stays in Redis for other workers
        # A Redis restart must not stop a running job: it keeps writing to MongoDB, and its message, if the
        # acknowledgement is lost, comes back and finds the job taken.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=False,  # jobs are watched and cancelled through MongoDB, not the broker
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=True,  # a worker started before Redis waits for it
        broker_connection_max_retries=None,  # and a worker whose Redis goes away waits for it to come back
        broker_transport_options={"socket_connect_timeout": 2.0, "socket_timeout": 5.0},
        task_publish_retry_policy=_RETRY,
    )
    return app


async def enqueue(app: Celery, job_id: str) -> None:
    """Publish the message for job ``job_id``; raises StoreUnavailable within PUBLISH_TIMEOUT_S when the broker
    cannot take it. The publish blocks (kombu), so it runs in a thread."""

    def publish() -> None:
        app.send_task(TASK, args=[job_id], queue=QUEUE, retry=True, retry_policy=_RETRY)

    from kombu.exceptions import KombuError
    from redis.exceptions import RedisError

    where = shown(str(app.conf.broker_url))
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await asyncio.to_thread(publish)
    except TimeoutError:
        raise StoreUnavailable(
            f"the job queue (Redis at {where}) did not answer within {PUBLISH_TIMEOUT_S:.0f} s"
        ) from None
    except (KombuError, RedisError, OSError) as exc:
        raise StoreUnavailable(f"the job queue (Redis at {where}) cannot be reached: {exc}") from exc


class CeleryRunner:
    """The service with the Celery runner: a submitted job is published for the workers; none runs here."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.app = create_celery(settings)
        self.store = store

    async def start(self) -> None:
        log.info("jobs run on Celery workers (broker %s)", shown(str(self.app.conf.broker_url)))

    async def submit(self, job: Job) -> None:
        """Queue a recorded job; raises StoreUnavailable (a 503) when Redis cannot take it, after marking the
        record failed with the reason: a refused job must not sit queued for a worker that never hears of it."""
        try:
            await enqueue(self.app, job.id)
        except StoreUnavailable as exc:
            with contextlib.suppress(StoreUnavailable):
                await self.store.finish(job.id, JobState.FAILED, f"not queued: {exc}")
            raise StoreUnavailable(f"{exc}; the job was not queued: submit it again later") from exc
        with contextlib.suppress(StoreUnavailable):  # only the lost-message sweep reads the mark
            await self.store.mark_published(job.id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.app.close)
