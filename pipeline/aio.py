"""Stopping background tasks so that a shutdown always ends.

A driver call can swallow a cancellation: PyMongo's async server selection, while its mongod is gone, ends the
call with its own error instead of ``CancelledError``, and a background loop built to survive that error (the
event log, the generation follower, a lease renewal, a heartbeat) then goes round again with the cancellation
spent: ``task.cancel(); await task`` waits forever and the service never exits on SIGTERM. Such loops ask
``cancelling()`` after an error; ``stop`` also cancels again until the task ends, for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

log = logging.getLogger(__name__)


def cancelling() -> bool:
    """Whether the running task was asked to stop, even if a call it made swallowed the cancellation: a loop
    that survives errors raises ``CancelledError`` after one when this is true."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(task: asyncio.Task[Any] | None, grace_s: float = 10.0, every_s: float = 1.0) -> bool:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every_s`` seconds in case one
    was swallowed (longer than the clean-up a cancellation starts in the task: a second one cuts that short).
    Returns False if it still runs after ``grace_s`` (left behind, with a warning): never hangs. An error the
    task ended with is logged, not raised: a shutdown goes on."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.warning("task %r did not stop within %.0f s of being cancelled; left behind", task.get_name(), grace_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(every_s * random.uniform(1.0, 1.5), left))  # never in step with it
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task %r had failed: %s", task.get_name(), exc, exc_info=exc)
    return True
