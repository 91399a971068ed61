"""HTTP load at the service boundary: our service vs a seed-style peer (eager CLIP + FAISS + dict), one run.

The systems: ours as shipped (INT8, query cache on), ours with the cache off, ours at FP32 with the cache and
cross-request batching off, and the peer at FP32 and at INT8. Each runs in its own process over the same
products and vectors (ours: its own copy of the stores), all started before the first row; each row is then
measured on every system in turn, the others idle meanwhile, with the same requests from one asyncio load
generator (httpx.AsyncClient) on loopback, on the same cores as the servers. Every ratio is printed in a second
table, between two systems that differ in one thing (architecture at one precision, precision in one
architecture, or the cache), never between the product and the peer.

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
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import show
from bench.data import photo
from bench.encoders import ensure_vit_b32
from bench.http_servers import Server, fill_ours, start_ours, start_peer, stop
from bench.http_workload import TOP_K, Mix, Request, Row, call, drive


@dataclass(frozen=True)
class System:
    label: str
    peer: bool
    precision: str
    cache: bool = False  # ours: the query-embedding cache (the peer has none)
    batching: bool = False  # ours: cross-request batching (INT8 runs one input per model call either way)


SYSTEMS = {
    "ours": System("ours INT8 (ONNX, Edge, mongod), query cache on", False, "int8", cache=True, batching=True),
    "ours-nocache": System("ours INT8, query cache off", False, "int8", batching=True),
    "ours-fp32": System("ours FP32, cache and batching off", False, "fp32"),
    "fp32": System("peer FP32 (eager, FAISS, dict)", True, "fp32"),
    "int8": System("peer INT8 (eager qdyn, FAISS, dict)", True, "int8"),
}
# (A, B, what differs): A over B, on the same work but for the one difference named.
COMPARISONS = [
    ("ours-nocache", "int8", "architecture at INT8: no query cache on either, one input per model call on both"),
    ("ours-fp32", "fp32", "architecture at FP32: no query cache, no cross-request batching on either"),
    ("ours-nocache", "ours-fp32", "precision in ours: INT8 vs FP32, cache off"),
    ("int8", "fp32", "precision in the peer: INT8 vs FP32"),
    ("ours", "ours-nocache", "ours' query cache: on vs off, INT8"),
]
MIXED = "mixed"
SINGLE = ["text, unique (uncached)", "text, same text repeated", "image, unique uploads", "similar"]
BUSY = 0.10  # a row during which other processes used more of the CPU than this was disturbed


async def _warm(server: Server, system: str, n: int, photos: list[bytes]) -> None:
    """Untimed requests of every kind: first calls load things."""
    warm = Mix(f"{system}-warm", n, photos)
    async with httpx.AsyncClient(base_url=server.url, timeout=120.0) as client:
        for rng_seed in range(3):
            rng = random.Random(rng_seed)
            for request in (("text", warm.unique_text(rng)), ("image", warm.unique_photo(rng))):
                await call(client, server.headers, request)
            await call(client, server.headers, ("similar", warm.product_id(rng)))


def _single(one: Mix, workload: str) -> Callable[[random.Random], Request]:
    picks: dict[str, Callable[[random.Random], Request]] = {
        SINGLE[0]: lambda rng: ("text", one.unique_text(rng)),
        SINGLE[1]: lambda rng: ("text", "striped red mug"),
        SINGLE[2]: lambda rng: ("image", one.unique_photo(rng)),
        SINGLE[3]: lambda rng: ("similar", one.product_id(rng)),
    }
    return picks[workload]


async def _measure(servers: dict[str, Server], n: int, clients: list[int], seconds: float, single: int) -> list[Row]:
    """Every row, each measured on every system in turn (all servers up, the others idle meanwhile).

    A row's systems run one right after the other, so a change in the machine's load over minutes reaches
    the rows a ratio divides alike. Each system gets its own copy of a row's requests (same seeds, same texts).
    """
    photos = [photo(20_000 + i) for i in range(32)]
    for key, server in servers.items():
        await _warm(server, key, n, photos)
    rows = []
    for c in clients:
        for key, server in servers.items():
            mix = Mix(f"m{c}", n, photos)
            rows.append(await drive(server, key, MIXED, mix.pick, c, seconds, 1_000_000))
    singles = {key: Mix("s1", n, photos) for key in servers}
    for workload in SINGLE:
        for key, server in servers.items():
            pick = _single(singles[key], workload)
            await drive(server, key, "warm-up", pick, 1, seconds, 2)
            rows.append(await drive(server, key, workload, pick, 1, seconds, single))
    return rows


def _cells(row: Row) -> list[str]:
    cached = sum(o.cached for o in row.outcomes) / max(1, len(row.outcomes))
    return [
        SYSTEMS[row.system].label,
        row.workload,
        str(row.clients),
        f"{len(row.outcomes):,}",
        f"{row.rps:.1f}",
        f"{row.p(50):.1f}",
        f"{row.p(99):.1f}",
        f"{row.server_p50():.1f}",
        str(len(row.errors)),
        f"{cached:.0%}",
        f"{row.rss_mb:.0f} ({row.files_mb:.0f})",
        f"{row.mongod_mb:.0f}" if row.mongod_mb is not None else "—",
        f"{row.other_cpu:.0%}" + (" !" if row.other_cpu > BUSY else ""),
    ]


def _columns(rows: list[Row]) -> list[tuple[str, int]]:
    """(workload, clients) of the ratio table's columns, in the main table's order."""
    return list(dict.fromkeys((r.workload, r.clients) for r in rows))


def _ratio_rows(rows: list[Row]) -> list[list[str]]:
    """One row per comparison both of whose systems ran: A's req/s over B's (mixed), B's p50 over A's (single)."""
    by = {(r.system, r.workload, r.clients): r for r in rows}
    ran = {r.system for r in rows}
    out = []
    for a, b, differs in COMPARISONS:
        if a not in ran or b not in ran:
            continue
        cells = [f"{SYSTEMS[a].label} over {SYSTEMS[b].label}", differs]
        for workload, clients in _columns(rows):
            ra, rb = by.get((a, workload, clients)), by.get((b, workload, clients))
            if ra is None or rb is None:
                cells.append("")
            else:
                ratio = ra.rps / rb.rps if workload == MIXED else rb.p(50) / ra.p(50)
                cells.append(f"{ratio:.2f}x" + (" !" if max(ra.other_cpu, rb.other_cpu) > BUSY else ""))
        out.append(cells)
    return out


def _notes(rows: list[Row], n: int, seconds: float, single: int) -> str:
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
        f"cache on either side; '{SINGLE[1]}' is a cache hit on every timed request for ours with its cache on; "
        f"'{SINGLE[2]}' as in the mixed rows; '{SINGLE[3]}' = the product's stored vectors, no encoding.\n"
        "Ours with the cache on is the service as shipped; 'cache off' sets PIPELINE__CACHE__MAX_ENTRIES=0 (a query "
        "identical to one being encoded at that moment still shares its encoding: counted as cached); 'batching off' "
        "sets PIPELINE__ENCODER__CROSS_REQUEST_BATCHING=false. Ours INT8 runs one input per model call "
        "(batch-independent vectors) whatever the batching setting. Peer INT8 (qdyn) = "
        "`torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)`; peer FP32 = the eager model as loaded; "
        "the peer has no cache and no cross-request batching (FastAPI plain `def` endpoints in the threadpool, each "
        "request one model call of one input). "
        "Cached = share of answers with `cached: true`. Latency over successful requests; errors = non-2xx, an "
        "answer without hits, or an exception. Server RSS = peak, sampled every 0.25 s, of the server process and "
        "its children except mongod (ours' managed mongod: its own column); (files) = the part of it that maps files "
        "(shared libraries; ours: Qdrant's memory-mapped segments and write-ahead log), page cache the kernel can "
        "reclaim. Server p50 = median of the `took_ms` "
        "the server reports (its search call; for the peer, its handler): the rest of the client's time is HTTP, "
        "routing, validation, auth, JSON and waiting for a worker. Other CPU = share of the machine's CPU used "
        "during the row by processes other than the benchmark, the server and its mongod (the other systems' "
        "servers, idle then, included); '!' marks rows above "
        f"{BUSY:.0%}, disturbed by other work"
        + (f" ({'; '.join(busy)}: rerun on a quiet machine)" if busy else "")
        + ".\nOurs as shipped, server-side stage medians in ms (single client): "
        + ("; ".join(stages) or "n/a")
        + "."
    )


def run(
    seconds: float = 60,
    n: int = 10_000,
    clients: tuple[int, ...] = (32, 64),
    single: int = 200,
    systems: tuple[str, ...] = tuple(SYSTEMS),
) -> None:
    repo = ensure_vit_b32()
    checkpoint = repo.parent / "vit-b32-random"
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        servers: dict[str, Server] = {}
        try:
            for key in systems:
                system = SYSTEMS[key]
                if system.peer:
                    servers[key] = start_peer(checkpoint, n, system.precision, Path(tmp))
                else:
                    root = Path(tmp) / key
                    fill_ours(repo, root, n)
                    servers[key] = start_ours(
                        repo, root, key, system.precision, cache=system.cache, batching=system.batching
                    )
            rows = asyncio.run(_measure(servers, n, list(clients), seconds, single))
            for key, server in servers.items():
                if any(r.errors for r in rows if r.system == key):
                    tail = server.log_tail()
                    print(f"{server.name} answered with errors; last lines of its log:\n{tail}", file=sys.stderr)
        finally:
            for server in servers.values():
                stop(server)
    for row in rows:
        for error in row.errors[:3]:
            print(f"error, {row.system} {row.workload} x{row.clients}: {error}", file=sys.stderr)
    order = [MIXED, *SINGLE]
    rows.sort(key=lambda r: (order.index(r.workload), r.clients, list(SYSTEMS).index(r.system)))
    headers = ["system", "workload", "clients", "requests", "req/s", "p50 ms", "p99 ms", "server p50 ms"]
    headers += ["errors", "cached", "server RSS MB (files)", "mongod RSS MB", "other CPU"]
    show(
        f"HTTP load, {n:,} products: our service vs a seed-style peer (eager CLIP + FAISS + dict)",
        headers,
        [_cells(r) for r in rows],
        "http",
        _notes(rows, n, seconds, single),
    )
    columns = [f"{w} x{c}" + (" req/s" if w == MIXED else " p50") for w, c in _columns(rows)]
    show(
        "HTTP ratios, same work but for the one difference named (A over B; >1: A faster)",
        ["A over B", "what differs", *columns],
        _ratio_rows(rows),
        "http_ratios",
        "Mixed columns: A's requests/s over B's; single-client columns: B's p50 over A's. From the table above, "
        f"same run; '!': A's or B's row was disturbed (other CPU above {BUSY:.0%}). 'similar' encodes nothing, so "
        "its precision ratios only show noise.",
    )
