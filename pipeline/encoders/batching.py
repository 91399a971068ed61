"""Micro-batching: concurrent requests to an in-process model are merged into one model call.

Callers ``await submit(items)``; a single worker task waits up to ``wait_s`` for more requests (or until
``max_batch`` items), runs the merged batch in the executor, and hands each caller its own rows. Inputs must
already be valid: a failure of the model call fails every request in that batch.

With ``merge=False`` each request runs as its own model call (still one at a time, still split at
``max_batch``). A model whose output for one input depends on its batch-mates (dynamic INT8) needs more than
that, since one request may hold many inputs: its ``run`` takes the rows one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

import numpy as np

from pipeline import aio

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[T]], np.ndarray],
        executor: Executor,
        max_batch: int,
        wait_s: float,
        merge: bool = True,
    ) -> None:
        self._run = run
        self._executor = executor
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._merge = merge
        self._queue: asyncio.Queue[tuple[list[T], asyncio.Future[np.ndarray]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # A job that would have pushed a batch past max_batch waits here to open the next batch.
        self._carry: tuple[list[T], asyncio.Future[np.ndarray]] | None = None

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
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._carry is not None:
                batch, self._carry = [self._carry], None
            else:
                batch = [await self._queue.get()]
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
            batch = [(items, fut) for items, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            merged = [item for items, _ in batch for item in items]
            try:
                out = await loop.run_in_executor(self._executor, self._run, merged)
            except Exception as exc:  # handed to every waiting caller, who re-raises it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for items, fut in batch:
                if not fut.done():
                    fut.set_result(out[start : start + len(items)])
                start += len(items)

    async def aclose(self) -> None:
        if self._worker is not None:
            await aio.stop(self._worker)
            self._worker = None
