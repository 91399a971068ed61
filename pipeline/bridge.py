"""A synchronous face onto the async stack, for callers that live in threads (Streamlit's script runs).

The stack is opened once on a private event loop in a daemon thread; ``call`` runs a coroutine there and
waits for its result. One instance per process (the UI caches it), closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from pipeline.config import Settings
from pipeline.stack import Stack, open_stack

T = TypeVar("T")


class StackBridge:
    def __init__(self, settings: Settings, timeout_s: float = 120.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stack-loop", daemon=True)
        self._thread.start()
        self._ready: Future[Stack] = Future()
        self._closed = asyncio.run_coroutine_threadsafe(self._hold(settings), self._loop)
        try:
            self.stack = self._ready.result(timeout=timeout_s)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        atexit.register(self.close)

    async def _hold(self, settings: Settings) -> None:
        self._release = asyncio.Event()
        try:
            async with open_stack(settings) as stack:
                self._ready.set_result(stack)
                await self._release.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, make: Callable[[Stack], Coroutine[Any, Any, T]], timeout_s: float = 60.0) -> T:
        """Run ``make(stack)`` on the stack's loop and return its result (its exceptions propagate)."""
        return asyncio.run_coroutine_threadsafe(make(self.stack), self._loop).result(timeout=timeout_s)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._release.set)
        with contextlib.suppress(Exception):
            self._closed.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
