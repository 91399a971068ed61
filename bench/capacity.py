"""``python -m bench capacity``: how many nodes of each kind 1M, 10M and 100M products need at 100, 1,000 and
10,000 queries/s, derived from figures measured here and the engines' published per-node figures.

Nothing here is a measurement of a cluster: it is arithmetic, printed with its inputs so each can be checked and
replaced by a better figure. One input is measured in this run: point reads of ten products by id from the
managed mongod on this machine (the metadata stage of a query). The others are quoted with their source.

The query mix is the HTTP benchmark's: 50% text (two vector searches: photos and titles; one text encoding),
25% photo uploads (one search, one image encoding), 25% "more like this" (two searches, no encoding). No credit is
taken for the query cache (26% of the mixed load was served from it in the HTTP benchmark).
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import show

SIZES = (1_000_000, 10_000_000, 100_000_000)
RATES = (100, 1_000, 10_000)
MIX = {"text": 0.50, "image": 0.25, "similar": 0.25}
SEARCHES = {"text": 2, "image": 1, "similar": 2}
VECTORS_PER_PRODUCT = 4  # two points per product (its photos), each with a photo and a title vector
DIM = 512


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str


# --- quoted and measured inputs ----------------------------------------------------------------------------
QDRANT_RPS = Figure(
    1238.0, "searches/s per 8-vCPU 32 GiB node at precision 0.99",
    "Qdrant single-node benchmark, dbpedia-openai-1M-1536-angular, qdrant-sq-rps-m-64-ef-512, 100 parallel "
    "clients, Azure Standard D8s v3 (https://qdrant.tech/benchmarks/single-node-speed-benchmark/)",
)  # fmt: skip
QDRANT_NODE_RAM_GIB = Figure(32.0, "GiB per node", "the same benchmark's server (8 vCPUs, 32 GiB)")
QDRANT_OVERHEAD = Figure(
    1.5, "x the raw vector bytes", "Qdrant capacity planning: memory_size = number_of_vectors * vector_dimension * "
    "4 bytes * 1.5 (https://qdrant.tech/documentation/capacity-planning/)",
)  # fmt: skip
TEXT_QPS = Figure(
    1064.0, "text encodings/s per GPU", "clip-as-service benchmark, ViT-B-32::openai, one TITAN RTX, default server "
    "settings (https://clip-as-service.jina.ai/user-guides/benchmark/)",
)  # fmt: skip
IMAGE_QPS = Figure(
    286.0, "image encodings/s per GPU (one image per request)", "the same clip-as-service benchmark "
    "(2,500 images/s per A100 in clip-retrieval's batch inference: an upper bound, not used)",
)  # fmt: skip
API_RPS = Figure(
    184.3, "requests/s per api process", "measured here: README 'The service over HTTP' (2026-12-06), 'more "
    "like this', one client, 5.1 ms p50 over HTTP on 2 cores (HTTP, auth, two vector searches in-process, "
    "metadata, JSON; no encoding and no cache hit: the work an api process does when Triton encodes)",
)  # fmt: skip
UTILISATION = 0.7  # plan every node kind to run at 70% of its measured or published rate
MIN_REPLICAS = 2  # every kind survives the loss of one node
HNSW_LINKS_BYTES = 2 * 16 * 4  # layer-0 links of m = 16 (the index default), 4 bytes each


async def _mongo_reads(seconds: float = 5.0, clients: int = 16, products: int = 20_000) -> float:
    """Queries/s of find({_id: {$in: 10 ids}}) on the managed mongod of this machine (2 cores)."""
    from pymongo import AsyncMongoClient

    from pipeline.stores.mongod import ManagedMongod

    with tempfile.TemporaryDirectory() as tmp:
        mongod = ManagedMongod(Path(tmp))
        uri = await mongod.start()
        client: AsyncMongoClient = AsyncMongoClient(uri)
        try:
            coll = client["bench"]["products"]
            doc = {"name": "blue striped t-shirt", "description": "A blue striped t-shirt by Acme." * 4,
                   "brand": "Acme", "category": "t-shirt", "color": "blue", "price": 19.0,
                   "images": ["https://shop.example/images/p.jpg"], "attributes": {"pattern": "striped"}}  # fmt: skip
            await coll.insert_many([{"_id": f"p{i}", **doc} for i in range(products)])
            done = 0
            stop = time.perf_counter() + seconds

            async def loop(seed: int) -> None:
                nonlocal done
                rng = random.Random(seed)
                while time.perf_counter() < stop:
                    ids = [f"p{rng.randrange(products)}" for _ in range(10)]
                    await coll.find({"_id": {"$in": ids}}).to_list(10)
                    done += 1

            start = time.perf_counter()
            await asyncio.gather(*(loop(i) for i in range(clients)))
            return done / (time.perf_counter() - start)
        finally:
            await client.close()
            await mongod.stop()


def _nodes(rate: float, per_node: float) -> int:
    return max(MIN_REPLICAS, math.ceil(rate / (per_node * UTILISATION)))


def run(measure_mongo: bool = True) -> None:
    mongo_rps = asyncio.run(_mongo_reads()) if measure_mongo else float("nan")
    searches = sum(MIX[k] * SEARCHES[k] for k in MIX)
    gpu_s = MIX["text"] / TEXT_QPS.value + MIX["image"] / IMAGE_QPS.value  # GPU-seconds per query
    per_gpu = 1 / gpu_s
    per_copy = QDRANT_RPS.value / searches  # queries/s one full copy of the collection answers (each shard once)
    bytes_per_vector = DIM * 1 + HNSW_LINKS_BYTES  # INT8 copy in RAM + graph; FP32 originals on disk
    usable = QDRANT_NODE_RAM_GIB.value * 0.75 * 2**30  # leave a quarter for the OS, page cache and segments
    rows: list[list[object]] = []
    for size in SIZES:
        ram = size * VECTORS_PER_PRODUCT * bytes_per_vector * QDRANT_OVERHEAD.value
        shards = max(1, math.ceil(ram / usable))
        for rate in RATES:
            copies = _nodes(rate, per_copy)
            rows.append([f"{size:,}", f"{rate:,}", _nodes(rate, API_RPS.value), _nodes(rate, per_gpu),
                         f"{shards} x {copies} = {shards * copies}", f"{ram / 2**30:.1f}",
                         _nodes(rate, mongo_rps) if mongo_rps == mongo_rps else "n/a"])  # fmt: skip
    mongo_reads = f"{mongo_rps:.0f}" if mongo_rps == mongo_rps else "n/a (not measured in this run: --no-measure-mongo)"
    arithmetic = [
        f"- api processes: rate / ({API_RPS.value:g} req/s x {UTILISATION:g}); {API_RPS.source}.",
        f"- GPUs (Triton): one query costs {MIX['text']:g}/{TEXT_QPS.value:g} + {MIX['image']:g}/{IMAGE_QPS.value:g}"
        f" = {gpu_s * 1000:.3f} GPU-ms, so one GPU answers {per_gpu:.0f} queries/s of the mix; text: "
        f"{TEXT_QPS.source}; images: {IMAGE_QPS.source}.",
        f"- Qdrant: {searches:g} searches per query (mix x spaces searched), one copy of the collection answers "
        f"{QDRANT_RPS.value:g} / {searches:g} = {per_copy:.0f} queries/s ({QDRANT_RPS.source}); copies = rate / "
        f"({per_copy:.0f} x {UTILISATION:g}), at least {MIN_REPLICAS} (replication factor). Shards = RAM / "
        f"{usable / 2**30:.0f} GiB usable of a {QDRANT_NODE_RAM_GIB.value:g} GiB node; RAM = products x "
        f"{VECTORS_PER_PRODUCT} vectors x ({DIM} B INT8 + {HNSW_LINKS_BYTES} B of graph links) x "
        f"{QDRANT_OVERHEAD.value:g} ({QDRANT_OVERHEAD.source}); the FP32 originals stay on disk for rescoring "
        f"({DIM * 4} B per vector).",
        "- MongoDB: reads of ten products by id per second on the managed mongod of this machine (16 clients, 2 "
        f"cores, 20,000 documents): {mongo_reads}; members = rate / (that x {UTILISATION:g}) reading from "
        "secondaries, at least a 3-member replica set for elections (the column counts the members that serve "
        "reads).",
        "- Caveats: the Qdrant figure is for 1M 1536-d vectors on one node; our vectors are 512-d (cheaper per "
        "distance) but a shard at 10M-100M products holds more of them (HNSW visits grow with log n), which this "
        "table does not model; the GPU figures are PyTorch without TensorRT on older cards (an H100 with FP16 "
        "ONNX/TensorRT should do several times better: measure with `python -m bench triton` on the target GPU).",
    ]
    show("Capacity: nodes per kind for catalog size x query rate (derived, not measured on a cluster)",
         ["products", "queries/s", "api processes", "GPUs (Triton)", "Qdrant nodes (shards x copies)",
          "Qdrant RAM GiB (one copy)", "MongoDB members serving reads"], rows, "capacity",
         "\n".join(arithmetic))  # fmt: skip
