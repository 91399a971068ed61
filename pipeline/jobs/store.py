"""Job records in MongoDB, so any replica answers for any job and a restarted service finds its jobs again.

Besides what :class:`Job` shows, a record holds the runner that owns it (``owner``: host and pid), a
``heartbeat`` renewed while it runs, and a ``checkpoint`` the job kind writes after each batch to resume from.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from pipeline.errors import Conflict, NotFound, StoreUnavailable
from pipeline.jobs.model import FINAL, RESUMABLE, Job, JobKind, JobState, RowError

ERRORS_KEPT = 1000
_HIDDEN = {"owner": 0, "checkpoint": 0, "published": 0}  # heartbeat is read, then dropped by Job


def _now() -> datetime:
    return datetime.now(UTC)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _of(doc: dict[str, Any], stale: datetime | None = None) -> Job:
    job = Job.model_validate({**{k: v for k, v in doc.items() if k not in _HIDDEN}, "id": doc["_id"]})
    if job.state is JobState.RUNNING and stale is not None and (doc.get("heartbeat") or stale) < stale:
        # Its process stopped without a word (killed); a restart will mark it so, or resume it.
        job.state, job.message = JobState.INTERRUPTED, "no heartbeat: its process seems to have stopped"
    return job


def _process_alive(owner: str) -> bool:
    """Whether ``host:pid`` names a live process; another host's processes are judged by heartbeat only."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobStore:
    def __init__(self, jobs: AsyncCollection[dict[str, Any]], heartbeat_s: float = 5.0) -> None:
        self._jobs = jobs
        self.heartbeat_s = heartbeat_s

    async def _do(self, op: Callable[[], Any]) -> Any:
        try:
            return await op()
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: jobs: {exc}") from exc

    async def ensure_indexes(self) -> None:
        await self._do(lambda: self._jobs.create_index([("state", ASCENDING), ("created", ASCENDING)]))

    async def create(self, kind: JobKind, params: dict[str, Any], by: str | None, local: bool = False) -> Job:
        doc: dict[str, Any] = {
            "_id": uuid.uuid4().hex,
            "kind": kind.value,
            "params": params,
            "state": JobState.QUEUED.value,
            "progress": {"done": 0, "total": None},
            "created": _now(),
            "result": {},
            "errors": [],
            "error_count": 0,
            "submitted_by": by,
            "local": local,
            "resumed": 0,
            "cancel_requested": False,
        }
        await self._do(lambda: self._jobs.insert_one(doc))
        return _of(doc)

    async def get(self, job_id: str) -> Job:
        doc = await self._do(lambda: self._jobs.find_one({"_id": job_id}, _HIDDEN))
        if doc is None:
            raise NotFound(f"no job {job_id!r}")
        return _of(doc, self._stale())

    def _stale(self) -> datetime:
        return _now() - timedelta(seconds=3 * self.heartbeat_s)

    async def checkpoint(self, job_id: str) -> dict[str, Any]:
        doc = await self._do(lambda: self._jobs.find_one({"_id": job_id}, {"checkpoint": 1}))
        return (doc or {}).get("checkpoint") or {}

    async def save_checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> None:
        await self._do(lambda: self._jobs.update_one({"_id": job_id}, {"$set": {"checkpoint": checkpoint}}))

    async def recent(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        query = {"state": state.value} if state else {}
        # A listing leaves out what can be long (the ids a job names, its errors): GET one job for those.
        brief = {**_HIDDEN, "errors": 0, "params.ids": 0}
        cursor = self._jobs.find(query, brief).sort("created", DESCENDING).limit(limit)
        docs = await self._do(lambda: cursor.to_list(None))
        return [_of(d, self._stale()) for d in docs]

    async def claim(self, owner: str, job_id: str | None = None) -> Job | None:
        """The oldest queued job (or ``job_id``, if it is still queued), now running under ``owner``; None when
        none waits (a ``job_id`` that is running elsewhere, final, cancelled or unknown: there is nothing to do)."""
        query: dict[str, Any] = {"state": JobState.QUEUED.value}
        if job_id is not None:
            query["_id"] = job_id
        doc = await self._do(
            lambda: self._jobs.find_one_and_update(
                query,
                {"$set": {"state": JobState.RUNNING.value, "owner": owner, "heartbeat": _now(), "started": _now()}},
                sort=[("created", ASCENDING)],
                projection=_HIDDEN,
                return_document=ReturnDocument.AFTER,
            )
        )
        return _of(doc) if doc else None

    async def start_foreground(self, job_id: str, owner: str) -> None:
        """A job run by the process that submitted it (the CLI with no service): running at once."""
        update = {"state": JobState.RUNNING.value, "owner": owner, "heartbeat": _now(), "started": _now()}
        await self._do(lambda: self._jobs.update_one({"_id": job_id}, {"$set": update}))

    async def report(
        self,
        job_id: str,
        done: int,
        total: int | None,
        result: dict[str, Any],
        checkpoint: dict[str, Any],
        errors: list[RowError],
        rate: float | None,
    ) -> bool:
        """Progress after a batch; returns whether a cancel was asked for meanwhile."""
        eta = (total - done) / rate if rate and total is not None and total >= done else None
        update: dict[str, Any] = {
            "$set": {
                "progress": {"done": done, "total": total},
                "result": result,
                "checkpoint": checkpoint,
                "rate_per_s": rate,
                "eta_s": eta,
                "heartbeat": _now(),
            }
        }
        if errors:
            docs = [e.model_dump() for e in errors]
            update["$push"] = {"errors": {"$each": docs, "$slice": ERRORS_KEPT}}
            update["$inc"] = {"error_count": len(errors)}
        doc = await self._do(
            lambda: self._jobs.find_one_and_update({"_id": job_id}, update, projection={"cancel_requested": 1})
        )
        return bool((doc or {}).get("cancel_requested"))

    async def beat(self, job_id: str) -> None:
        await self._do(lambda: self._jobs.update_one({"_id": job_id}, {"$set": {"heartbeat": _now()}}))

    async def finish(
        self, job_id: str, state: JobState, message: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        """The job's end (or, for QUEUED, its hand-back at a shutdown: resumed by the next runner)."""
        update: dict[str, Any] = {"state": state.value, "message": message, "eta_s": None}
        if state in FINAL:
            update["finished"] = _now()
        if result is not None:
            update["result"] = result
        changes: dict[str, Any] = {"$set": update}
        if state is JobState.QUEUED:
            changes["$inc"] = {"resumed": 1}
        await self._do(lambda: self._jobs.update_one({"_id": job_id}, changes))

    async def mark_published(self, job_id: str) -> None:
        """Its message was handed to the broker now (the Celery runner: see :meth:`take_lost`)."""
        await self._do(lambda: self._jobs.update_one({"_id": job_id}, {"$set": {"published": _now()}}))

    async def take_lost(self, before: datetime, limit: int) -> list[str]:
        """Queued jobs last published before ``before`` (or never), oldest first, each now marked published by
        this caller alone (a compare-and-set on the mark: of several workers sweeping at once, one republishes
        a job, not all)."""
        query = {"state": JobState.QUEUED.value, "published": {"$not": {"$gte": before}}}
        docs = await self._do(
            lambda: self._jobs.find(query, {"published": 1}).sort("created", ASCENDING).limit(limit).to_list(None)
        )
        taken = []
        for doc in docs:
            mark: dict[str, Any] = {"_id": doc["_id"], "state": JobState.QUEUED.value,
                                    "published": doc.get("published")}  # fmt: skip
            won = await self._do(partial(self._jobs.update_one, mark, {"$set": {"published": _now()}}))
            if won.modified_count:
                taken.append(str(doc["_id"]))
        return taken

    async def cancel(self, job_id: str) -> Job:
        """A queued (or interrupted) job is cancelled at once; a running one stops after its current batch."""
        job = await self.get(job_id)
        if job.final:
            raise Conflict(f"job {job_id} is already {job.state}")
        if job.state is JobState.RUNNING:
            await self._do(lambda: self._jobs.update_one({"_id": job_id}, {"$set": {"cancel_requested": True}}))
        else:  # queued, interrupted, or running with no live process: nothing to wait for
            update = {"state": JobState.CANCELLED.value, "finished": _now(), "message": "cancelled"}
            await self._do(
                lambda: self._jobs.update_one(
                    {"_id": job_id, "state": {"$nin": [s.value for s in FINAL]}},
                    {"$set": {**update, "cancel_requested": True}},  # a runner claiming it meanwhile stops at once
                )
            )
        return await self.get(job_id)

    async def recover(self) -> list[Job]:
        """Running jobs whose process is gone (dead here, or silent past three heartbeats elsewhere) become
        interrupted; those of a resumable kind are queued again. Returns the jobs it touched."""
        stale = self._stale()
        docs = await self._do(lambda: self._jobs.find({"state": JobState.RUNNING.value}).to_list(None))
        touched = []
        for doc in docs:
            heartbeat = doc.get("heartbeat")
            if _process_alive(str(doc.get("owner", ""))) and heartbeat and heartbeat > stale:
                continue
            resume = JobKind(doc["kind"]) in RESUMABLE and not doc.get("cancel_requested")
            update = {
                "state": (JobState.QUEUED if resume else JobState.INTERRUPTED).value,
                "message": "interrupted (its process stopped)" + ("; resumed" if resume else ": submit it again"),
            }
            changes: dict[str, Any] = {"$set": update}
            if resume:
                changes["$inc"] = {"resumed": 1}
            try:
                await self._jobs.update_one({"_id": doc["_id"], "state": JobState.RUNNING.value}, changes)
            except PyMongoError as exc:
                raise StoreUnavailable(f"MongoDB: jobs: {exc}") from exc
            touched.append(await self.get(doc["_id"]))
        return touched
