"""Build a Qdrant Edge shard's indexes (HNSW graphs, INT8 copies) in a process of its own.

``EdgeShard.optimize()`` holds Python's GIL for its whole run (measured with qdrant-edge-py 0.9.0: a thread
ticking every millisecond advanced once during a 24 s optimize), so called in the service it would stop every
request, the event loop included, for as long as the graph takes to build (minutes at a million vectors). A
shard that no other process has open (a re-index's staged shard, before it is swapped in) is therefore closed
by its owner, optimized here, and loaded again.

``python -m pipeline.stores.edge_optimize PATH`` prints one JSON line: segments, points, indexed vectors and
seconds. The parent runs it with :func:`optimize_in_child`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.errors import StoreUnavailable


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
    }


async def optimize_in_child(path: Path) -> dict[str, Any]:
    """Optimize the (closed) shard at ``path`` in a child process; returns what it printed. Raises
    StoreUnavailable with the child's last error line when it fails. Cancelling kills the child."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise StoreUnavailable(f"building the index of {path} failed (exit {proc.returncode}): {last}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


if __name__ == "__main__":
    print(json.dumps(optimize(Path(sys.argv[1]))), flush=True)
