"""The event log: every query and error goes to MongoDB off the hot path.

``record`` never waits and never raises: events go into a bounded queue that a background task drains in
batches. When the queue is full, or MongoDB is slow or down, events are dropped and counted, so a dead
database can neither slow nor fail a query, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pipeline import aio
from pipeline.errors import StoreUnavailable

log = logging.getLogger(__name__)
Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]


class EventLog:
    def __init__(self, write: Writer, queue_size: int, batch_size: int, interval_s: float = 0.0) -> None:
        self._write = write
        self._interval = interval_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="event-log")

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (a timestamp is added); drop it, counted, if the queue is full."""
        event = {"ts": datetime.now(UTC), **event}
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._interval and self._queue.qsize() < self._batch_size:
                await asyncio.sleep(self._interval)  # one write per interval, not one per query
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
                self.written += len(batch)
            except StoreUnavailable as exc:
                self.dropped += len(batch)
                if aio.cancelling():  # the write swallowed the shutdown
                    raise asyncio.CancelledError from exc
                if self.dropped == len(batch):
                    log.warning("event log: MongoDB unavailable, dropping events (%s)", exc)
            except Exception:  # whatever else a write raises costs this batch, never the log itself
                log.exception("event log: writing %d events failed; dropped", len(batch))
                self.dropped += len(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def aclose(self, flush_timeout_s: float = 2.0) -> None:
        """Give queued events ``flush_timeout_s`` to reach MongoDB, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                await self._queue.join()
        await aio.stop(self._task)
        self._task = None
