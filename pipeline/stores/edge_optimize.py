"""Build a Qdrant Edge shard's indexes (HNSW graphs, INT8 copies) in a process of its own.

``EdgeShard.optimize()`` holds Python's GIL for its whole run (measured with qdrant-edge-py 0.9.0: a thread
ticking every millisecond advanced once during a 24 s optimize), so called in the service it would stop every
request, the event loop included, for as long as the graph takes to build (minutes at a million vectors). A
shard that no other process has open (a re-index's staged shard, before it is swapped in) is therefore closed
by its owner, optimized here, and loaded again.

``python -m pipeline.stores.edge_optimize PATH`` prints one JSON line: segments, points, indexed vectors,
seconds and the child's peak memory. The parent runs it with :func:`optimize_in_child`, which hears from the
caller every few seconds while it waits (a job's progress, and its cancel: the child is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pipeline.errors import StoreUnavailable

CHILD = (sys.executable, "-m", __name__)  # the command the child runs, the shard's path appended
WATCH_EVERY_S = 2.0


def optimize(path: Path) -> dict[str, Any]:
    import qdrant_edge

    start = time.perf_counter()
    shard = qdrant_edge.EdgeShard.load(str(path))
    try:
        shard.optimize()
        shard.flush()
        info = shard.info()
    finally:
        shard.close()
    return {
        "segments": info.segments_count,
        "points": info.points_count,
        "indexed_vectors": info.indexed_vectors_count,
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


async def optimize_in_child(path: Path, watch: Callable[[float], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Optimize the (closed) shard at ``path`` in a child process; returns what it printed. Raises
    StoreUnavailable with the child's last error line when it fails. ``watch(seconds)`` is awaited every
    ``WATCH_EVERY_S`` while the child runs; an exception it raises, or a cancel, kills the child (the shard is
    then half-built: the caller drops it) and propagates."""
    proc = await asyncio.create_subprocess_exec(
        *CHILD, str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    start = time.monotonic()
    talk = asyncio.ensure_future(proc.communicate())
    try:
        while not (await asyncio.wait({talk}, timeout=WATCH_EVERY_S))[0]:
            if watch is not None:
                await watch(time.monotonic() - start)
        out, err = talk.result()
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        # Ends once the killed child's pipes close; a second cancel meanwhile cancels it too and propagates.
        await asyncio.gather(talk, return_exceptions=True)
        raise
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise StoreUnavailable(f"building the index of {path} failed (exit {proc.returncode}): {last}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


if __name__ == "__main__":
    print(json.dumps(optimize(Path(sys.argv[1]))), flush=True)
