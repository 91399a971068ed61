"""The load generator of ``python -m bench http``: the mixed workload, one request, and C clients for S seconds.

One asyncio loop, one httpx.AsyncClient per row with a connection per client, loopback only. Each client
draws its requests from its own seeded generator, so every system gets the same sequence of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import psutil

from bench.data import BRANDS, CATEGORIES, COLORS
from bench.http_servers import Server

TOP_K = 10
ADJECTIVES = ["striped", "plain", "vintage", "small", "large", "classic", "leather", "cotton"]

Request = tuple[str, str | bytes]


@dataclass
class Outcome:
    kind: str
    ms: float  # as the client saw it
    ok: bool
    cached: bool = False
    took_ms: float | None = None  # as the server reported it (``took_ms``)
    timings: dict[str, float] = field(default_factory=dict)  # the server's ``timings_ms`` (ours only)
    error: str = ""


@dataclass
class Row:
    system: str
    workload: str
    clients: int
    outcomes: list[Outcome]
    elapsed_s: float
    rss_mb: float
    files_mb: float  # of rss_mb, the pages that map files, at the peak sample
    mongod_mb: float | None
    other_cpu: float  # share of the machine's CPU used by processes outside the benchmark and the server

    @property
    def rps(self) -> float:
        return len(self.outcomes) / self.elapsed_s

    @property
    def errors(self) -> list[str]:
        return [o.error for o in self.outcomes if not o.ok]

    def p(self, q: float) -> float:
        ms = [o.ms for o in self.outcomes if o.ok]
        return float(np.percentile(ms, q)) if ms else float("nan")

    def server_p50(self) -> float:
        took = [o.took_ms for o in self.outcomes if o.ok and o.took_ms is not None]
        return statistics.median(took) if took else float("nan")

    def stages(self) -> dict[str, float]:
        """Median per stage of the server's own timings, in the order the server lists them."""
        names = list(dict.fromkeys(k for o in self.outcomes if o.ok for k in o.timings))
        return {k: statistics.median(o.timings[k] for o in self.outcomes if o.ok and k in o.timings) for k in names}


def _text(rng: random.Random, tag: str) -> str:
    return f"{rng.choice(ADJECTIVES)} {rng.choice(COLORS)} {rng.choice(CATEGORIES)} {rng.choice(BRANDS)} {tag}"


class Mix:
    """The mixed workload of one row (described in bench/http_load.py); ``pick`` is called by every client."""

    def __init__(self, tag: str, n: int, photos: list[bytes], head: int = 100, head_share: float = 0.6) -> None:
        rng = random.Random(tag)
        self.tag, self.n, self.photos, self.head_share = tag, n, photos, head_share
        self.head = [_text(rng, f"{tag}h{i}") for i in range(head)]
        self.weights = [1 / (rank + 1) for rank in range(head)]
        self.counter = itertools.count()

    def unique_text(self, rng: random.Random) -> str:
        return _text(rng, f"{self.tag}t{next(self.counter)}")

    def unique_photo(self, rng: random.Random) -> bytes:
        """A pool photo with a unique tail after its JPEG end marker: decoded the same, never the same bytes."""
        return rng.choice(self.photos) + f"bench-nonce-{self.tag}-{next(self.counter)}".encode()

    def product_id(self, rng: random.Random) -> str:
        return f"p{rng.randrange(self.n):06d}"

    def pick(self, rng: random.Random) -> Request:
        u = rng.random()
        if u < 0.5:
            if rng.random() < self.head_share:
                return "text", rng.choices(self.head, self.weights)[0]
            return "text", self.unique_text(rng)
        if u < 0.75:
            return "image", self.unique_photo(rng)
        return "similar", self.product_id(rng)


async def call(client: httpx.AsyncClient, headers: dict[str, str], request: Request) -> Outcome:
    kind, arg = request
    start = time.perf_counter()
    try:
        if kind == "text":
            r = await client.post("/v1/search/text", json={"text": arg, "top_k": TOP_K}, headers=headers)
        elif kind == "image":
            files = {"file": ("query.jpg", arg, "image/jpeg")}
            r = await client.post("/v1/search/image", files=files, data={"top_k": str(TOP_K)}, headers=headers)
        else:
            r = await client.get(f"/v1/products/{arg!s}/similar", params={"top_k": TOP_K}, headers=headers)
        ms = (time.perf_counter() - start) * 1000
        body = r.json() if r.is_success else None
        if isinstance(body, dict) and isinstance(body.get("hits"), list) and body["hits"]:
            took = body.get("took_ms")
            timings = body.get("timings_ms")
            return Outcome(
                kind,
                ms,
                True,
                bool(body.get("cached")),
                float(took) if isinstance(took, int | float) else None,
                timings if isinstance(timings, dict) else {},
            )
        return Outcome(kind, ms, False, error=f"{kind}: HTTP {r.status_code} {r.text[:200]}")
    except Exception as exc:  # counted: any failure is an error of the row
        return Outcome(kind, (time.perf_counter() - start) * 1000, False, error=f"{kind}: {exc!r}"[:300])


def _busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))


def _own_s(server: Server) -> float:
    me = psutil.Process().cpu_times()
    return me.user + me.system + server.cpu_s()


async def drive(
    server: Server,
    system: str,
    workload: str,
    pick: Callable[[random.Random], Request],
    clients: int,
    seconds: float,
    max_requests: int,
) -> Row:
    """``clients`` loops sending ``pick``'s requests until ``seconds`` pass or ``max_requests`` are sent."""
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    outcomes: list[Outcome] = []
    peak: dict[str, float] = {"rss": 0.0, "files": 0.0, "mongod": -1.0}
    budget = [max_requests]
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            rss, files, mongo = server.rss_mb()
            if rss > peak["rss"]:
                peak["rss"], peak["files"] = rss, files
            peak["mongod"] = max(peak["mongod"], mongo if mongo is not None else -1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60.0) as client:
        end = time.monotonic() + seconds

        async def loop(k: int) -> None:
            rng = random.Random(f"{workload}-{clients}-{k}")
            while time.monotonic() < end and budget[0] > 0:
                budget[0] -= 1
                outcomes.append(await call(client, server.headers, pick(rng)))

        sampling = asyncio.create_task(sampler())
        busy0, own0 = _busy_s(), _own_s(server)
        start = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
        other = max(0.0, (_busy_s() - busy0) - (_own_s(server) - own0)) / (elapsed * (psutil.cpu_count() or 1))
        done.set()
        await sampling
    mongod = peak["mongod"] if peak["mongod"] >= 0 else None
    return Row(system, workload, clients, outcomes, elapsed, peak["rss"], peak["files"], mongod, other)
