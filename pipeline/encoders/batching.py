"""Micro-batching: concurrent requests to an in-process model are merged into one model call.

Callers ``await submit(items)``; a single worker task waits up to ``wait_s`` for more requests (or until
``max_batch`` items), runs the merged batch in the executor, and hands each caller its own rows. Inputs must
already be valid: a failure of the model call fails every request in that batch.

With ``merge=False`` each request runs as its own model call (still split at ``max_batch``). A model whose
output for one input depends on its batch-mates (dynamic INT8) needs more than that, since one request may hold
many inputs: its ``run`` takes the rows one at a time; merging such requests gains nothing and makes each wait
for the whole merged batch.

Up to ``concurrency`` model calls of one batcher run at once (the executor's threads, shared with the other
batchers, decide which run first): with one, a queue of photos waits for one core while the other idles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

import numpy as np

from pipeline import aio
from pipeline.errors import EncoderUnavailable

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[T]], np.ndarray],
        executor: Executor,
        max_batch: int,
        wait_s: float,
        merge: bool = True,
        concurrency: int = 1,
    ) -> None:
        self._run = run
        self._executor = executor
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._merge = merge
        self._slots = asyncio.Semaphore(concurrency)
        self._calls: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[tuple[list[T], asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # A job that would have pushed a batch past max_batch waits here to open the next batch.
        self._carry: tuple[list[T], asyncio.Future[np.ndarray]] | None = None
        self._forming: list[tuple[list[T], asyncio.Future[np.ndarray]]] = []  # the batch being gathered

    async def submit(self, items: Sequence[T]) -> np.ndarray:
        """Rows of the model's output for ``items``, in order; requests over max_batch are split."""
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(), name="micro-batcher")
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(items), self._max_batch):
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait((list(items[start : start + self._max_batch]), fut))
            futures.append(fut)
        parts = await asyncio.gather(*futures)
        return np.concatenate(parts, axis=0)

    async def _serve(self) -> None:
        while True:
            await self._slots.acquire()  # a batch is formed when a model call can start
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            call = asyncio.create_task(self._call(batch), name="micro-batch call")
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _next_batch(self) -> list[tuple[list[T], asyncio.Future[np.ndarray]]]:
        """The next job, with the jobs that arrive within ``wait_s`` when merging (up to ``max_batch`` items)."""
        assert self._queue is not None
        self._forming = batch = []
        if self._carry is not None:
            batch.append(self._carry)
            self._carry = None
        else:
            batch.append(await self._queue.get())
        size = len(batch[0][0])
        deadline = time.monotonic() + self._wait_s
        while self._merge and size < self._max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if size + len(job[0]) > self._max_batch:
                self._carry = job
                break
            batch.append(job)
            size += len(job[0])
        self._forming = []
        return [(items, fut) for items, fut in batch if not fut.cancelled()]

    async def _call(self, batch: list[tuple[list[T], asyncio.Future[np.ndarray]]]) -> None:
        """One model call for ``batch``; each caller gets its rows, or the call's exception to re-raise."""
        try:
            merged = [item for items, _ in batch for item in items]
            out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, merged)
        except BaseException as exc:  # each caller re-raises the call's error; closing fails them cleanly
            _fail(batch, exc if isinstance(exc, Exception) else EncoderUnavailable(CLOSED))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._slots.release()
        start = 0
        for items, fut in batch:
            if not fut.done():
                fut.set_result(out[start : start + len(items)])
            start += len(items)

    async def aclose(self) -> None:
        """Stop gathering and calling; a caller still waiting gets EncoderUnavailable, never waits forever."""
        if self._worker is not None:
            await aio.stop(self._worker)
            self._worker = None
        for call in list(self._calls):
            await aio.stop(call)
        waiting = [*self._forming, *([self._carry] if self._carry else [])]
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._forming, self._carry = [], None
        _fail(waiting, EncoderUnavailable(CLOSED))


CLOSED = "the encoder was closed before this input was embedded"


def _fail(jobs: Sequence[tuple[object, asyncio.Future[np.ndarray]]], exc: BaseException) -> None:
    for _, fut in jobs:
        if not fut.done():
            fut.set_exception(exc)
