"""HTTP load at the service boundary: our service vs a seed-style peer (eager CLIP + FAISS + dict), one run.

Each system runs alone in its own process (ours, then the peer in FP32, then the peer in INT8), over the
same products and vectors, and gets the same requests from one asyncio load generator (httpx.AsyncClient)
on loopback. The generator runs on the same cores as the server, identically for every system.

Mixed workload, per request: 50% text, 25% image, 25% similar.
  text: 60% from a head of 100 popular texts drawn with Zipf(1) popularity (the top text is ~19% of the head
        traffic), 40% a long-tail text never sent before; each row has its own texts, so every row starts cold.
  image: a JPEG (640x480, ~80 KB) from a pool of 32 photos, made unique per request by bytes appended after
        its end marker (decoders ignore them): users' photos do not repeat, so no cache can help.
  similar: a product id drawn uniformly from the catalog.
Then single-client rows, a fixed number of requests each: unique texts (no cache can help: the row that
isolates the model and the search), the same text repeated (ours answers from its cache), unique images,
similar.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.common import show
from bench.data import photo
from bench.encoders import ensure_vit_b32
from bench.http_servers import Server, fill_ours, start_ours, start_peer, stop
from bench.http_workload import TOP_K, Mix, Request, Row, call, drive

SYSTEMS = {
    "ours": "ours (ONNX INT8, Edge, mongod)",
    "fp32": "peer FP32 (eager, FAISS, dict)",
    "int8": "peer INT8 (eager qdyn, FAISS, dict)",
}
MIXED = "mixed"
SINGLE = ["text, unique (uncached)", "text, same text repeated", "image, unique uploads", "similar"]
BUSY = 0.10  # a row during which other processes used more of the CPU than this was disturbed


async def _measure(server: Server, system: str, n: int, clients: list[int], seconds: float, single: int) -> list[Row]:
    photos = [photo(20_000 + i) for i in range(32)]
    warm = Mix(f"{system}-warm", n, photos)
    async with httpx.AsyncClient(base_url=server.url, timeout=120.0) as client:  # untimed: first calls load things
        for rng_seed in range(3):
            rng = random.Random(rng_seed)
            for request in (("text", warm.unique_text(rng)), ("image", warm.unique_photo(rng))):
                await call(client, server.headers, request)
            await call(client, server.headers, ("similar", warm.product_id(rng)))
    rows = []
    for c in clients:
        mix = Mix(f"m{c}", n, photos)
        rows.append(await drive(server, system, MIXED, mix.pick, c, seconds, 1_000_000))
    one = Mix("s1", n, photos)
    picks: dict[str, Callable[[random.Random], Request]] = {
        SINGLE[0]: lambda rng: ("text", one.unique_text(rng)),
        SINGLE[1]: lambda rng: ("text", "striped red mug"),
        SINGLE[2]: lambda rng: ("image", one.unique_photo(rng)),
        SINGLE[3]: lambda rng: ("similar", one.product_id(rng)),
    }
    for name, pick in picks.items():
        await drive(server, system, "warm-up", pick, 1, seconds, 2)
        rows.append(await drive(server, system, name, pick, 1, seconds, single))
    return rows


def _cells(row: Row, ours: Row | None) -> list[str]:
    cached = sum(o.cached for o in row.outcomes) / max(1, len(row.outcomes))
    ratio = ""
    # Throughput for the mixed rows, p50 for the single-client ones; none for the repeated text, where ours
    # answers from its cache and the peer has none: that would divide unlike work.
    if ours is not None and row.system != "ours" and row.workload != SINGLE[1]:
        ratio = f"{ours.rps / row.rps:.2f}x req/s" if row.workload == MIXED else f"{row.p(50) / ours.p(50):.2f}x p50"
    return [
        SYSTEMS[row.system],
        row.workload,
        str(row.clients),
        f"{len(row.outcomes):,}",
        f"{row.rps:.1f}",
        f"{row.p(50):.1f}",
        f"{row.p(99):.1f}",
        f"{row.server_p50():.1f}",
        str(len(row.errors)),
        f"{cached:.0%}",
        f"{row.rss_mb:.0f}",
        f"{row.mongod_mb:.0f}" if row.mongod_mb is not None else "—",
        f"{row.other_cpu:.0%}" + (" !" if row.other_cpu > BUSY else ""),
        ratio,
    ]


def _notes(rows: list[Row], n: int, seconds: float, single: int, ours: dict[tuple[str, int], Row]) -> str:
    ratios = []
    for row in rows:
        base = ours.get((row.workload, row.clients))
        if row.workload == MIXED and row.system != "ours" and base is not None:
            ratios.append(f"{row.clients} clients: {base.rps / row.rps:.2f}x vs peer {row.system.upper()}")
    mix = (__doc__ or "").split("Mixed workload", 1)[1].split("Then single-client", 1)[0]
    stages = []
    for row in rows:
        if row.system == "ours" and row.clients == 1 and row.stages():
            inner = ", ".join(f"{k} {v:.1f}" for k, v in row.stages().items())
            stages.append(f"{row.workload}: {inner} (client p50 {row.p(50):.1f})")
    busy = [f"{r.system} {r.workload} x{r.clients}" for r in rows if r.other_cpu > BUSY]
    return (
        f"{n:,} products, top-{TOP_K}, loopback. Mixed rows: C concurrent clients, each looping for {seconds:.0f} s "
        f"over the mixed workload{' '.join(mix.split())} "
        f"Single-client rows: {single} requests each (or {seconds:.0f} s), after 2 untimed: "
        f"'{SINGLE[0]}' never repeats a text, so it isolates the model + vector search + metadata path with no "
        f"cache on either side; '{SINGLE[1]}' is a cache hit for ours on every timed request; '{SINGLE[2]}' as in "
        f"the mixed rows; '{SINGLE[3]}' = the product's stored image vector → image index, the product left out.\n"
        "Peer INT8 (qdyn) = `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)`, the same precision "
        "as ours; peer FP32 = the eager model as loaded. The peer has no cache and no cross-request batching "
        "(FastAPI plain `def` endpoints in the threadpool, "
        "how seed services are written), so in the mixed rows the caching of repeated texts is part of the design "
        f"being compared; the '{SINGLE[0]}' row at 1 client is the like-for-like one. "
        "Throughput ours/peer (mixed): " + ("; ".join(ratios) or "n/a") + ". "
        "Ratio column: ours req/s ÷ this row's (mixed), this row's p50 ÷ ours (single client). Cached = share of "
        "answers with `cached: true` (ours: the query's embedding came from its cache). Latency over "
        "successful requests; errors = non-2xx, an answer without hits, or an exception. Server RSS = peak, sampled "
        "every 0.25 s of the server process and its children except mongod; ours' managed mongod is a separate "
        "process, its peak RSS in its own column. The load generator shares the machine's cores with the server, "
        "the same for every system. Server p50 = median of the `took_ms` the server reports (its search call; "
        "for the peer, its handler): the rest of the client's time is HTTP, routing, validation, auth, JSON and "
        "waiting for a worker. Other CPU = share of the machine's CPU used during the row by processes other than "
        f"the benchmark, the server and its mongod; '!' marks rows above {BUSY:.0%}, disturbed by other work"
        + (f" ({'; '.join(busy)}: rerun on a quiet machine)" if busy else "")
        + ".\nOurs, server-side stage medians in ms (single client): "
        + ("; ".join(stages) or "n/a")
        + "."
    )


def run(
    seconds: float = 60,
    n: int = 10_000,
    clients: tuple[int, ...] = (32, 64),
    single: int = 200,
    systems: tuple[str, ...] = ("ours", "fp32", "int8"),
) -> None:
    repo = ensure_vit_b32()
    checkpoint = repo.parent / "vit-b32-random"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for system in systems:
            server = None
            try:
                if system == "ours":
                    fill_ours(repo, Path(tmp) / "ours", n)
                    server = start_ours(repo, Path(tmp) / "ours")
                else:
                    server = start_peer(checkpoint, n, system, Path(tmp))
                measured = asyncio.run(_measure(server, system, n, list(clients), seconds, single))
                if any(r.errors for r in measured):
                    tail = server.log_tail()
                    print(f"{server.name} answered with errors; last lines of its log:\n{tail}", file=sys.stderr)
                rows += measured
            finally:
                stop(server)
    for row in rows:
        for error in row.errors[:3]:
            print(f"error, {row.system} {row.workload} x{row.clients}: {error}", file=sys.stderr)
    ours = {(r.workload, r.clients): r for r in rows if r.system == "ours"}
    order = [MIXED, *SINGLE]
    rows.sort(key=lambda r: (order.index(r.workload), r.clients, list(SYSTEMS).index(r.system)))
    headers = ["system", "workload", "clients", "requests", "req/s", "p50 ms", "p99 ms", "server p50 ms"]
    headers += ["errors", "cached", "server RSS MB", "mongod RSS MB", "other CPU", "ours vs this"]
    show(
        f"HTTP load, {n:,} products: our service vs a seed-style peer (eager CLIP + FAISS + dict)",
        headers,
        [_cells(r, ours.get((r.workload, r.clients))) for r in rows],
        "http",
        _notes(rows, n, seconds, single, ours),
    )
