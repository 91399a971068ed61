"""What a running job sees: the stack, its record, where to report progress (and hear of a cancel)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.jobs.model import Job, RowError
from pipeline.jobs.store import JobStore
from pipeline.schemas import Outcome

if TYPE_CHECKING:
    from pipeline.stack import Stack

ProgressHook = Callable[[int, int | None, dict[str, Any]], None]  # done, total, the result so far


class Cancelled(Exception):
    """A cancel was asked for; the job stopped between two batches."""


@dataclass
class JobContext:
    stack: Stack
    store: JobStore
    job: Job
    http: httpx.AsyncClient  # fetches what an API caller's job names: public hosts only
    on_progress: ProgressHook | None = None  # the CLI's progress bar, in the foreground
    local: bool = False  # submitted by this machine's own user: catalog files may name local images
    _start: float = field(default_factory=time.monotonic)
    _first: int | None = None

    async def report(
        self, done: int, total: int | None, result: dict[str, Any], checkpoint: dict[str, Any], errors: list[RowError]
    ) -> None:
        """Record progress; raises Cancelled when a cancel was asked for."""
        if self._first is None:
            self._first = 0
        elapsed = time.monotonic() - self._start
        rate = (done - self._first) / elapsed if elapsed > 0 and done > self._first else None
        if self.on_progress:
            self.on_progress(done, total, result)
        if await self.store.report(self.job.id, done, total, result, checkpoint, errors, rate):
            raise Cancelled(f"job {self.job.id} cancelled after {done} of {total if total is not None else '?'}")

    def begin(self, done: int) -> None:
        """Where this run starts (after a resume, the work already done does not count into the rate)."""
        self._first, self._start = done, time.monotonic()


def tally(counts: dict[str, int], outcomes: list[Outcome], lines: dict[str, int | None]) -> list[RowError]:
    errors = []
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "rejected":
            errors.append(RowError(row=lines.get(outcome.id), id=outcome.id, message=outcome.error or "rejected"))
    return errors
