"""The event log's drainer survives any failure of a write."""

from __future__ import annotations

import asyncio

from pipeline.errors import StoreUnavailable
from pipeline.events import EventLog


async def test_drainer_survives_unforeseen_write_errors():
    written: list[dict] = []
    failures = [RuntimeError("a driver bug"), StoreUnavailable("MongoDB down"), TypeError("cannot encode")]

    async def write(batch):
        if failures:
            raise failures.pop(0)
        written.extend(batch)

    log = EventLog(write, queue_size=100, batch_size=1)
    log.start()
    for i in range(5):
        log.record({"kind": "query", "i": i})
    await log.aclose(flush_timeout_s=5)
    assert log.dropped == 3
    assert [e["i"] for e in written] == [3, 4]  # the events after the failures still reach the store
    assert log.written == 2


async def test_drainer_keeps_running_after_a_failure():
    calls = asyncio.Event()

    async def write(batch):
        if batch[0]["i"] == 0:
            raise ValueError("boom")
        calls.set()

    log = EventLog(write, queue_size=10, batch_size=1)
    log.start()
    log.record({"i": 0})
    log.record({"i": 1})
    await asyncio.wait_for(calls.wait(), 5)
    await log.aclose()
