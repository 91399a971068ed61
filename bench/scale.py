"""``python -m bench scale``: the vector index as the catalog grows, Qdrant Edge (through the stack's own
adapter: exact, HNSW, HNSW + INT8 with rescoring) against FAISS (``IndexHNSWFlat``, ``IndexIVFFlat``: the peer
the replaced systems use), on the same vectors and queries.

Data: each product has two photos and a title, stored as the stack stores them (one point per photo with its
image vector and the title vector: two points, four vectors per product). Vectors are synthetic, clustered
like catalog embeddings: 64 categories, families of ~20 near-identical products (a model in its colours), two
photos per product close to each other. A query is a shopper's photo of a catalog product: one of its photo
vectors plus noise (cosine ~0.9). Every engine answers the same 200 queries for top-10 points in the image
space, unfiltered and with a keyword filter matching 1/8 (category) and 1/100 (brand) of the products.

Recall@10 against exact search (numpy, FP32) on the same data. FAISS is tuned to the same recall: the smallest
``efSearch`` / ``nprobe`` whose unfiltered recall reaches the Qdrant HNSW row's; it holds the image vectors only
(no payload, no title space), so its build and memory are of half the vectors; filters are an ``IDSelectorBatch``.
Build: from precomputed vectors, to searchable (upserts + graph). RSS: the process's growth once built and once
its queries ran (Edge maps its files: pages it touched count), and the peak of the child process that built the
graphs. Disk: the shard folder, or FAISS's serialised index. Vectors are drawn in blocks; 1M products hold 6 GB
of vectors in this process besides the engine's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import RESULTS, show

DIM = 512
QUERIES = 200


def catalog_vectors(products: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(photo vectors [2n, D], title vectors [n, D], category [n], brand [n]): unit vectors in families.

    Drawn in blocks of products (the generator's stream is the same as one draw of the whole: the same vectors at
    any size), so a million products need the vectors' own memory (6 GB), not several float64 copies of it."""
    rng = np.random.default_rng(seed)
    categories = rng.standard_normal((64, DIM)).astype(np.float32)
    families = max(1, products // 20)
    family_of = rng.integers(0, families, products)
    family_cat = rng.integers(0, 64, families)
    fam = categories[family_cat] + 0.5 * rng.standard_normal((families, DIM)).astype(np.float32)
    product = np.empty((products, DIM), np.float32)
    for lo, hi in _blocks(products):
        product[lo:hi] = fam[family_of[lo:hi]] + 0.25 * rng.standard_normal((hi - lo, DIM)).astype(np.float32)
    photos = np.empty((2 * products, DIM), np.float32)
    for lo, hi in _blocks(2 * products):
        photos[lo:hi] = product[lo // 2 : (hi + 1) // 2].repeat(2, axis=0)[: hi - lo]
        photos[lo:hi] += 0.1 * rng.standard_normal((hi - lo, DIM)).astype(np.float32)
        photos[lo:hi] /= np.linalg.norm(photos[lo:hi], axis=1, keepdims=True)
    titles = product  # in place: the products' centres are not needed once the photos are drawn
    for lo, hi in _blocks(products):
        titles[lo:hi] += 0.3 * rng.standard_normal((hi - lo, DIM)).astype(np.float32)
        titles[lo:hi] /= np.linalg.norm(titles[lo:hi], axis=1, keepdims=True)
    return photos, titles, family_cat[family_of] % 8, np.arange(products) % 100


def _blocks(n: int, size: int = 65_536) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering ``n`` rows (``size`` is even: a block of photos starts at a product's first)."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _disk(path: Path) -> int:
    """Blocks allocated (the engine preallocates sparse files: their apparent size says little)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _pct(times: list[float], q: float) -> float:
    return float(np.percentile(times, q)) * 1000


class Case:
    """One filter: the points it admits (by point number) and the exact top-10 of every query."""

    def __init__(self, name: str, mask: np.ndarray, photos: np.ndarray, queries: np.ndarray) -> None:
        self.name, self.mask = name, mask
        self.allowed = np.flatnonzero(mask).astype(np.int64)
        self.truth = []
        for lo, hi in _blocks(len(queries), 25):  # 25 queries x 2M points: 200 MB of scores at a time
            sims = queries[lo:hi] @ photos.T
            sims[:, ~mask] = -np.inf
            self.truth += [set(row) for row in np.argpartition(-sims, 10, axis=1)[:, :10].tolist()]


def _measure(search: Callable[[np.ndarray, Case], list[int]], queries: np.ndarray, case: Case,
             first: int | None = None) -> dict[str, Any]:  # fmt: skip
    """p50/p99 of ``search`` over the queries (the first ``first`` of them) and its mean recall@10."""
    queries = queries[:first]
    for q in queries[:5]:
        search(q, case)
    times, recalls = [], []
    for q, truth in zip(queries, case.truth[: len(queries)], strict=True):
        start = time.perf_counter()
        got = search(q, case)
        times.append(time.perf_counter() - start)
        recalls.append(len(truth & set(got)) / 10)
    return {"p50": _pct(times, 50), "p99": _pct(times, 99), "recall": statistics.mean(recalls)}


class Data:
    def __init__(self, products: int) -> None:
        self.products = products
        self.photos, self.titles, self.cat, self.brand = catalog_vectors(products, seed=products)
        rng = np.random.default_rng(1)
        picked = self.photos[rng.integers(0, len(self.photos), QUERIES)]
        queries = picked + 0.5 / np.sqrt(DIM) * rng.standard_normal(picked.shape).astype(np.float32)
        self.queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        point_cat, point_brand = np.repeat(self.cat, 2), np.repeat(self.brand, 2)
        self.cases = [
            Case("unfiltered", np.ones(len(self.photos), bool), self.photos, self.queries),
            Case("1/8", point_cat == 3, self.photos, self.queries),
            Case("1/100", point_brand == 7, self.photos, self.queries),
        ]


def _edge_row(label: str, spec: Any, data: Data) -> dict[str, Any]:
    from pipeline.schemas import SearchFilters
    from pipeline.stores.qdrant_edge import EdgeIndex
    from pipeline.stores.vectors import ModelStamp, SpaceQuery, VectorPoint
    from pipeline.types import Modality

    stamp = ModelStamp("0" * 64, DIM, "synthetic")
    filters = {"unfiltered": SearchFilters(), "1/8": SearchFilters(category="c3"), "1/100": SearchFilters(brand="b7")}
    root = Path(tempfile.mkdtemp(prefix="scale-"))
    loop = asyncio.new_event_loop()
    index = EdgeIndex(root, "products", spec)
    loop.run_until_complete(index.open(stamp))

    async def fill() -> None:
        async with index.rebuild(stamp) as staged:
            for first in range(0, data.products, 1000):
                batch = []
                for p in range(first, min(data.products, first + 1000)):
                    payload = {"product_id": str(p), "category": [f"c{data.cat[p]}"], "brand": f"b{data.brand[p]}"}
                    batch += [VectorPoint(str(p), k, data.photos[2 * p + k], data.titles[p],
                                          {**payload, "image_index": k}) for k in range(2)]  # fmt: skip
                await staged.upsert(batch)

    def search(q: np.ndarray, case: Case) -> list[int]:
        hits = loop.run_until_complete(index.search([SpaceQuery(q, Modality.IMAGE)], filters[case.name], 10))[0]
        return [2 * int(h.product_id) + h.image_index for h in hits]

    try:
        before, start = _rss(), time.perf_counter()
        loop.run_until_complete(fill())
        build_s, grown = time.perf_counter() - start, _rss() - before
        peak = index.last_build["peak_rss_mb"] * 2**20 if index.last_build else None  # the child that built it
        info = loop.run_until_complete(index.info())
        measured = {c.name: _measure(search, data.queries, c) for c in data.cases}
        return {"engine": label, "build_s": build_s, "rss": grown, "rss_after": _rss() - before,
                "child_peak": peak, "disk": _disk(root),
                "indexed": f"{info.indexed_vectors or 0:,}/{info.points * 2:,}", **measured}  # fmt: skip
    finally:
        loop.run_until_complete(index.aclose())
        loop.close()
        shutil.rmtree(root, ignore_errors=True)


def _faiss_row(kind: str, data: Data, target: dict[str, float]) -> dict[str, Any]:
    import faiss as _faiss

    faiss: Any = _faiss  # its stubs lag its SWIG API (SearchParametersHNSW, sel=)
    photos, n = data.photos, len(data.photos)
    before, start = _rss(), time.perf_counter()
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.add(photos)
        label, knob_name, knobs = "FAISS IndexHNSWFlat (M 32)", "efSearch", [16, 32, 64, 128, 256, 512]
    else:
        nlist = max(16, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(photos[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)])
        index.add(photos)
        label, knob_name, knobs = f"FAISS IndexIVFFlat (nlist {nlist})", "nprobe", [1, 2, 4, 8, 16, 32, 64, 128]
    build_s, grown = time.perf_counter() - start, _rss() - before
    selectors = {c.name: faiss.IDSelectorBatch(c.allowed) for c in data.cases if c.name != "unfiltered"}

    def searcher(knob: int) -> Callable[[np.ndarray, Case], list[int]]:
        def search(q: np.ndarray, case: Case) -> list[int]:
            sel = selectors.get(case.name)
            if kind == "hnsw":
                params: Any = faiss.SearchParametersHNSW(efSearch=knob, sel=sel)
            else:
                params = faiss.SearchParametersIVF(nprobe=knob, sel=sel)
            _, ids = index.search(q[None], 10, params=params)
            return [int(i) for i in ids[0] if i >= 0]

        return search

    # Per filter, the smallest setting whose recall reaches the Qdrant HNSW row's there (capped at 0.99), tuned
    # on a third of the queries; the cell names it.
    measured = {}
    for case in data.cases:
        goal = min(0.99, target[case.name])
        knob = next((k for k in knobs if _measure(searcher(k), data.queries, case, 60)["recall"] >= goal), knobs[-1])
        measured[case.name] = {**_measure(searcher(knob), data.queries, case), "knob": f"{knob_name} {knob}"}
    return {"engine": label, "build_s": build_s, "rss": grown, "rss_after": _rss() - before, "child_peak": None,
            "disk": len(faiss.serialize_index(index)),
            "indexed": "photos only", **measured}  # fmt: skip


def _cell(m: dict[str, Any]) -> str:
    knob = f", {m['knob']}" if "knob" in m else ""
    return f"{m['p50']:.2f} / {m['p99']:.2f} ({m['recall']:.3f}{knob})"


ENGINES = ("exact", "hnsw", "int8", "int8-disk", "faiss-hnsw", "faiss-ivf")
DEFAULT_ENGINES = ("exact", "hnsw", "int8", "faiss-hnsw", "faiss-ivf")


def run(sizes: tuple[int, ...], engines: tuple[str, ...] = DEFAULT_ENGINES) -> None:
    """The table (and plot) for ``sizes``, with the ``engines`` rows. FAISS is tuned to the recall of the first
    Qdrant graph row there (HNSW, else HNSW + INT8, in RAM or on disk), or to 0.99 when none runs."""
    from pipeline.stores.index_config import IndexSpec

    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}: choose among {', '.join(ENGINES)}")
    rows: list[list[str]] = []
    curves: dict[str, list[tuple[int, float]]] = {}
    configs = {"exact": ("Qdrant Edge, exact", None), "hnsw": ("Qdrant Edge, HNSW", IndexSpec()),
               "int8": ("Qdrant Edge, HNSW + INT8 + rescore", IndexSpec(quantization="int8")),
               "int8-disk": ("Qdrant Edge, HNSW + INT8 + rescore, vectors on disk",
                             IndexSpec(quantization="int8", on_disk=True))}  # fmt: skip
    for products in sizes:
        data = Data(products)
        edge = {name: _edge_row(*configs[name], data) for name in configs if name in engines}
        graph = edge.get("hnsw") or edge.get("int8") or edge.get("int8-disk")
        target = {c.name: graph[c.name]["recall"] if graph else 0.99 for c in data.cases}
        faiss = [_faiss_row(kind, data, target) for kind in ("hnsw", "ivf") if f"faiss-{kind}" in engines]
        for row in [*edge.values(), *faiss]:
            curves.setdefault(row["engine"].split(" (nlist")[0], []).append((products, row["unfiltered"]["p50"]))
            child = f" (build process {row['child_peak'] / 2**20:.0f})" if row["child_peak"] else ""
            rows.append([f"{products:,}", row["engine"], f"{row['build_s']:.1f}",
                         f"{row['rss'] / 2**20:.0f} / {row['rss_after'] / 2**20:.0f}{child}",
                         f"{row['disk'] / 2**20:.0f}", row["indexed"], _cell(row["unfiltered"]), _cell(row["1/8"]),
                         _cell(row["1/100"])])  # fmt: skip
        del data
    headers = ["products", "engine", "build s", "RSS +MB built / queried", "disk MB", "indexed vectors", "unfiltered",
               "filter 1/8", "filter 1/100"]  # fmt: skip
    show(
        "Vector index at catalog scale: search stage, top-10 image points, ms p50 / p99 (recall@10 vs exact)",
        headers,
        rows,
        "scale",
        f"{os.cpu_count()} cores. Qdrant rows: the stack's EdgeIndex (two points of an image and a title vector per "
        "product, payload indexes, graph built in a child process); FAISS: the photo vectors only. See "
        "bench/scale.py for the data and the tuning.",
    )
    _plot(curves)


def _plot(curves: dict[str, list[tuple[int, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="products (2 photos + a title each)", ylabel="search p50, ms",
           title="Search stage latency against catalog size (unfiltered)")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "scale.png", dpi=110)
