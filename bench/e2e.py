"""End-to-end query latency and ingestion rate: the stack vs a PyTorch eager prototype, at INT8 and at FP32.

The stack is the embedded default: onnxruntime in-process, Qdrant Edge, a local mongod and the query-embedding
cache. The baseline is what a first prototype looks like: PyTorch eager CLIP (as loaded, or INT8 by
``quantize_dynamic`` on its Linear layers), numpy brute force over in-memory matrices, a dict for metadata and a
dict of query embeddings as its cache. Both run at both precisions, so that the precision gain (INT8 over FP32
in one architecture) and the architecture gain (stack over baseline at one precision) read separately; a cache
hit is a cache hit on both sides; a filtered query is filtered on both sides. Ingestion also runs the encoders
alone (no writes), INT8 per-row and batched, so that what writing costs and what batch independence costs each
have their own ratio. ViT-B/32 shapes with random weights (latency does not depend on the weights).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import show
from bench.data import clustered, photo, product
from bench.encoders import ensure_vit_b32

PRECISIONS = ("int8", "fp32")
QUERIES = [
    "text, cache miss",
    "text, cache hit",
    "image, cache miss",
    "image, cache hit",
    "product id",
    "text, cache miss, filtered",
]
TOP_K = 10
BATCH = 32  # the ingest's batch (PIPELINE__INGEST__BATCH_SIZE default), and the baseline's


def _fmt(ms: list[float]) -> str:
    med = statistics.median(ms)
    digits = 2 if med < 1 else 1
    return f"{med:.{digits}f} / {float(np.percentile(ms, 99)):.{digits}f}"


def _over(b: list[float] | None, a: list[float] | None) -> str:
    """b's p50 over a's: how many times faster a is (>1: a faster)."""
    if not a or not b:
        return ""
    r = statistics.median(b) / statistics.median(a)
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x"


def _key(kind: str, payload: str | bytes) -> str:
    data = payload.encode() if isinstance(payload, str) else payload
    return hashlib.blake2b(kind.encode() + b"\0" + data, digest_size=20).hexdigest()


class Baseline:
    """PyTorch eager + numpy brute force + dicts (metadata, query embeddings): the prototype.

    ``per_row``: embed a batch one input per model call (batch-independent INT8, as the stack runs it).
    """

    def __init__(self, checkpoint: Path, precision: str, per_row: bool = False) -> None:
        import torch
        from transformers import CLIPImageProcessorPil, CLIPTokenizer

        from bench.peer import eager_clip

        self.torch = torch
        self.model = eager_clip(checkpoint, precision)
        self.tok = CLIPTokenizer.from_pretrained(checkpoint)
        self.proc = CLIPImageProcessorPil.from_pretrained(checkpoint)
        self.per_row = per_row
        self.cache: dict[str, np.ndarray] = {}
        self.image = self.text = np.zeros((0, 0), np.float32)
        self.ids: list[str] = []
        self.position: dict[str, int] = {}
        self.meta: dict[str, Any] = {}
        self.category = self.price = np.zeros(0)

    def fill(self, n: int, dim: int) -> None:
        """The same products and vectors as ``bench.search._fill`` writes to the stack."""
        self.image, self.text = clustered(n, dim, 1), clustered(n, dim, 2)
        products = [product(i, [f"/bench/{i}.jpg"]) for i in range(n)]
        self.ids = [p.id for p in products]
        self.position = {pid: i for i, pid in enumerate(self.ids)}
        self.meta = {p.id: p.model_dump() for p in products}
        self.category = np.array([p.category for p in products])
        self.price = np.array([p.price for p in products])
        self.cache.clear()

    def _unit(self, out: Any) -> np.ndarray:
        feats = getattr(out, "pooler_output", out)
        return self.torch.nn.functional.normalize(feats, dim=-1).numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self.per_row and len(texts) > 1:
            return np.concatenate([self.embed_texts([t]) for t in texts])
        batch = self.tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with self.torch.inference_mode():
            return self._unit(self.model.get_text_features(**batch))

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        from PIL import Image

        if self.per_row and len(images) > 1:
            return np.concatenate([self.embed_images([b]) for b in images])
        pils = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        with self.torch.inference_mode():
            return self._unit(self.model.get_image_features(**self.proc(images=pils, return_tensors="pt")))

    def _cached(self, kind: str, payload: Any, embed: Callable[[Any], np.ndarray]) -> np.ndarray:
        key = _key(kind, payload)
        vector = self.cache.get(key)
        if vector is None:
            vector = self.cache[key] = embed(payload)
        return vector

    def _top(self, image_q: np.ndarray, text_q: np.ndarray, rows: np.ndarray | None, exclude: int = -1) -> list[dict]:
        """Both spaces scored, summed per product, top-k with metadata; ``rows`` limits to a filter's matches."""
        image, text = (self.image, self.text) if rows is None else (self.image[rows], self.text[rows])
        scores = image @ image_q + text @ text_q
        positions = np.arange(len(self.ids)) if rows is None else rows
        if exclude >= 0:
            scores = np.where(positions == exclude, -np.inf, scores)
        k = min(TOP_K, len(scores) - 1)
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        return [self.meta[self.ids[int(positions[i])]] for i in top]

    def search_text(self, text: str, category: str | None = None, max_price: float | None = None) -> list[dict]:
        vector = self._cached("text", text, lambda t: self.embed_texts([t])[0])
        rows = None
        if category is not None or max_price is not None:
            mask = np.ones(len(self.ids), bool)
            if category is not None:
                mask &= self.category == category
            if max_price is not None:
                mask &= self.price <= max_price
            rows = np.flatnonzero(mask)
        return self._top(vector, vector, rows)

    def search_image(self, data: bytes) -> list[dict]:
        vector = self._cached("image", data, lambda b: self.embed_images([b])[0])
        return self._top(vector, vector, None)

    def search_product(self, pid: str) -> list[dict]:
        i = self.position[pid]
        return self._top(self.image[i], self.text[i], None, exclude=i)


def _workload(repeat: int, rounds: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Per query kind: the timed queries, and ``rounds`` untimed ones (distinct from them, or the cache hit)."""
    photos = [photo(10_000 + i) for i in range(repeat)]
    warm_photos = [photo(30_000 + i) for i in range(rounds)]
    timed: dict[str, list[Any]] = {
        QUERIES[0]: [f"blue shirt {i}" for i in range(repeat)],
        QUERIES[1]: ["blue shirt 1"] * repeat,
        QUERIES[2]: photos,
        QUERIES[3]: [photos[0]] * repeat,
        QUERIES[4]: [f"p{i:06d}" for i in range(repeat)],
        QUERIES[5]: [f"red mug {i}" for i in range(repeat)],
    }
    warm: dict[str, list[Any]] = {
        QUERIES[0]: [f"warm-up text {i}" for i in range(rounds)],
        QUERIES[1]: ["blue shirt 1"] * rounds,
        QUERIES[2]: warm_photos,
        QUERIES[3]: [photos[0]] * rounds,
        QUERIES[4]: [f"p{repeat + i:06d}" for i in range(rounds)],
        QUERIES[5]: [f"warm-up mug {i}" for i in range(rounds)],
    }
    return timed, warm


def _settings(repo: Path, root: Path, precision: str) -> Any:
    from pipeline.config import EncoderSettings, MongoSettings, QdrantSettings, Settings
    from pipeline.types import Precision

    return Settings(
        encoder=EncoderSettings(model_repository=repo, precision=Precision(precision)),
        qdrant=QdrantSettings(path=root / "qdrant"),
        mongo=MongoSettings(data_dir=root / "mongo"),
    )


def _stack_calls(stack: Any) -> list[Callable[[Any], Any]]:
    from pipeline.schemas import SearchFilters

    s, mugs = stack.search, SearchFilters(category="mug", max_price=150)
    return [
        s.search_text,
        s.search_text,
        s.search_image,
        s.search_image,
        s.search_product,
        lambda t: s.search_text(t, filters=mugs),
    ]


def _baseline_calls(base: Baseline) -> list[Callable[[Any], Any]]:
    calls: list[Callable[[Any], Any]] = [
        base.search_text,
        base.search_text,
        base.search_image,
        base.search_image,
        base.search_product,
        lambda t: base.search_text(t, category="mug", max_price=150),
    ]

    def awaitable(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def call(item: Any) -> Any:
            return fn(item)

        return call

    return [awaitable(fn) for fn in calls]


async def _latency(
    repo: Path, root: Path, bases: dict[str, Baseline], n: int, dim: int, repeat: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """ms per query of each system ("stack int8", "baseline fp32", ...) and query kind, timed round-robin.

    Both stacks are open at once and every system answers each query kind in ``rounds`` turns, a slice of the
    queries per turn after one untimed query (two in the first turn): load drifts of a shared machine reach
    every system, and the previous system's runtime threads wind down before the timing.
    """
    from bench.search import _fill
    from pipeline.stack import open_stack

    timed, warm = _workload(repeat, rounds)
    systems: dict[str, list[Callable[[Any], Any]]] = {}
    async with contextlib.AsyncExitStack() as opened:
        for p in PRECISIONS:
            stack = await opened.enter_async_context(open_stack(_settings(repo, root / f"s{n}-{p}", p)))
            await _fill(stack, n, dim)
            systems[f"stack {p}"] = _stack_calls(stack)
        for p in PRECISIONS:
            bases[p].fill(n, dim)
            systems[f"baseline {p}"] = _baseline_calls(bases[p])
        out: dict[str, dict[str, list[float]]] = {name: {q: [] for q in QUERIES} for name in systems}
        per = -(-repeat // rounds)
        for k, q in enumerate(QUERIES):
            for r, start in enumerate(range(0, repeat, per)):
                for name, calls in systems.items():
                    for item in warm[q][r : r + 1] * (2 if r == 0 else 1):
                        await calls[k](item)
                    for item in timed[q][start : start + per]:
                        t = time.perf_counter()
                        await calls[k](item)
                        out[name][q].append((time.perf_counter() - t) * 1000)
    return out


def _catalog(folder: Path, n: int) -> tuple[Path, list[bytes], list[str]]:
    """n products with one 640x480 JPEG each, on disk for the stack's ingest, in memory for the rest."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    photos, rows = [], []
    for i in range(n):
        data = photo(i)
        (folder / "img" / f"{i}.jpg").write_bytes(data)
        photos.append(data)
        rows.append(product(i, [f"img/{i}.jpg"]))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(p.model_dump(mode="json")) for p in rows) + "\n")
    return catalog, photos, [p.embedding_text() for p in rows]


async def _stack_ingest(settings: Any, catalog: Path, n: int) -> float:
    from pipeline.stack import open_stack

    async with open_stack(settings) as stack:
        report = await stack.ingest.ingest(catalog)
    if report.added != n:
        raise RuntimeError(f"bench ingest: expected {n} added, got {report}")
    return n / report.seconds


async def _stack_encode(repo: Path, precision: str, per_row: bool, photos: list[bytes], texts: list[str]) -> float:
    """The stack's in-process encoder on the ingest's work, called as the ingest calls it, nothing written.

    Per batch of 32: one ``encode_images`` per product, concurrently (decoding overlaps the model calls; the
    encoder's queue merges them), then one ``encode_texts`` for the titles.
    """
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.types import Precision

    encoder = OnnxEncoder.load(repo, precision=Precision(precision))
    # Bench only: the batched INT8 path the service no longer runs (its vectors depend on their batch-mates).
    encoder._per_row = per_row
    try:
        await encoder.encode_images(photos[:2])
        start = time.perf_counter()
        for s in range(0, len(photos), BATCH):
            await asyncio.gather(*(encoder.encode_images([b]) for b in photos[s : s + BATCH]))
            await encoder.encode_texts(texts[s : s + BATCH])
        return len(photos) / (time.perf_counter() - start)
    finally:
        await encoder.aclose()


def _baseline_ingest(base: Baseline, photos: list[bytes], texts: list[str]) -> float:
    base.embed_images(photos[:2])
    start = time.perf_counter()
    for s in range(0, len(photos), BATCH):
        images = base.embed_images(photos[s : s + BATCH])
        titles = base.embed_texts(texts[s : s + BATCH])
        for j in range(len(images)):
            base.meta[f"p{s + j:06d}"] = {"image": images[j], "text": titles[j]}
    return len(photos) / (time.perf_counter() - start)


def _calls(per_row: bool) -> str:
    return "per-row (1 input per call)" if per_row else f"batched ({BATCH} per call)"


def _ingest(
    repo: Path, bases: dict[str, Baseline], tmp: Path, n: int, rounds: int
) -> tuple[list[list[str]], dict[str, float]]:
    """Products/s of each ingest run, the median of ``rounds`` rounds that each run every one in turn.

    Returns the table's rows and the medians by key (for INGEST_COMPARISONS).
    """
    catalog, photos, texts = _catalog(tmp / "catalog", n)
    runs: dict[str, tuple[list[str], Callable[[int], float]]] = {}
    for p in PRECISIONS:
        service_per_row = p == "int8"  # how the stack runs each precision

        def ingest(r: int, p: str = p) -> float:
            return asyncio.run(_stack_ingest(_settings(repo, tmp / f"ingest-{p}-{r}", p), catalog, n))

        labels = ["stack: ingest", f"ONNX {p.upper()}", _calls(service_per_row), "MongoDB + Qdrant Edge"]
        runs[f"stack ingest {p}"] = (labels, ingest)
        for per_row in (True, False) if p == "int8" else (False,):

            def encode(r: int, p: str = p, per_row: bool = per_row) -> float:
                return asyncio.run(_stack_encode(repo, p, per_row, photos, texts))

            runs[f"stack encode {p} {per_row}"] = (
                ["stack: encoders only", f"ONNX {p.upper()}", _calls(per_row), "none"],
                encode,
            )
    for p in PRECISIONS:
        for per_row in (True, False) if p == "int8" else (False,):

            def eager(r: int, p: str = p, per_row: bool = per_row) -> float:
                bases[p].per_row = per_row
                try:
                    return _baseline_ingest(bases[p], photos, texts)
                finally:
                    bases[p].per_row = False

            model = "eager INT8 (qdyn)" if p == "int8" else "eager FP32"
            runs[f"baseline {p} {per_row}"] = (["baseline", model, _calls(per_row), "dict"], eager)
    measured: dict[str, list[float]] = {key: [] for key in runs}
    for r in range(rounds):
        for key, (_, fn) in runs.items():
            measured[key].append(fn(r))
    rates = {key: statistics.median(v) for key, v in measured.items()}
    rows = [[*runs[key][0], f"{rates[key]:.1f}", f"{min(v):.1f}-{max(v):.1f}"] for key, v in measured.items()]
    return rows, rates


INGEST_COMPARISONS = [
    ("stack encode int8 True", "baseline int8 True", "architecture at INT8, per-row on both, no writes"),
    ("stack encode int8 False", "baseline int8 False", "architecture at INT8, batched on both, no writes"),
    ("stack encode fp32 False", "baseline fp32 False", "architecture at FP32, batched on both, no writes"),
    ("stack encode int8 False", "stack encode fp32 False", "precision in the stack, batched on both"),
    ("baseline int8 False", "baseline fp32 False", "precision in the baseline, batched on both"),
    ("stack encode int8 True", "stack encode int8 False", "per-row vs batched INT8 in the stack"),
    ("baseline int8 True", "baseline int8 False", "per-row vs batched INT8 in the baseline"),
    ("stack ingest int8", "stack encode int8 True", "the stack's file reads, writes and bookkeeping, INT8 per-row"),
    ("stack ingest fp32", "stack encode fp32 False", "the stack's file reads, writes and bookkeeping, FP32 batched"),
]


def run(
    sizes: tuple[int, ...] = (1_000, 10_000),
    repeat: int = 60,
    ingest_n: int = 200,
    rounds: int = 6,
    ingest_rounds: int = 3,
) -> None:
    from pipeline.manifest import load_manifest

    repo = ensure_vit_b32()
    checkpoint = repo.parent / "vit-b32-random"
    dim = load_manifest(repo).dim
    bases = {p: Baseline(checkpoint, p) for p in PRECISIONS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            ms = asyncio.run(_latency(repo, Path(tmp), bases, n, dim, repeat, rounds))
            for q in QUERIES:
                s8, b8 = ms["stack int8"][q], ms["baseline int8"][q]
                s32, b32 = ms["stack fp32"][q], ms["baseline fp32"][q]
                rows.append(
                    [
                        f"{n:,}",
                        q,
                        _fmt(s8),
                        _fmt(b8),
                        _over(b8, s8),
                        _fmt(s32),
                        _fmt(b32),
                        _over(b32, s32),
                        f"{_over(s32, s8)} / {_over(b32, b8)}",
                    ]
                )
        ingest_rows, rates = _ingest(repo, bases, Path(tmp), ingest_n, ingest_rounds)
    show(
        "End-to-end query latency, ms (p50 / p99): the stack vs PyTorch eager + numpy + dict, at INT8 and FP32",
        [
            "products",
            "query",
            "stack INT8",
            "baseline INT8",
            "INT8: stack over baseline",
            "stack FP32",
            "baseline FP32",
            "FP32: stack over baseline",
            "INT8 over FP32: stack / baseline",
        ],
        rows,
        "search",
        "Stack = onnxruntime in-process (INT8: one input per model call; a query is one input either way), Qdrant "
        "Edge, mongod, the query-embedding cache. Baseline = PyTorch eager CLIP (FP32 as loaded; INT8 = "
        "quantize_dynamic on the Linear layers), numpy brute force over both vector spaces, a dict for metadata and "
        "a dict of query embeddings keyed by a hash of the query (its cache). Ratios divide p50s of the same query "
        "(>1: the first named faster): stack over baseline at one precision = the architecture; INT8 over FP32 in "
        "one system = the precision. Cache hit = the same query repeated, answered from each side's cache (the "
        "search and metadata still run); filtered = category 'mug' and price ≤ 150 on both (Qdrant payload "
        "filter; a numpy mask); product id = the product's stored vectors searched, the product left out (no "
        "encoding, so its precision ratios only show noise). Stored vectors are synthetic clustered unit vectors "
        "with real metadata (query latency does not depend on how they were made); query encoding is the real "
        f"ViT-B/32-shaped model. Top-{TOP_K}, metadata included; {repeat} queries per cell, timed in {rounds} turns "
        "per query kind, each turn running the four systems one after the other (both stacks open at once), after "
        "an untimed query per turn: load drifts of a shared machine reach all four.",
    )
    show(
        f"Ingestion, {ingest_n} products with one 640x480 JPEG each, products/s",
        ["run", "model", "model calls", "writes", "products/s (median)", "range"],
        ingest_rows,
        "search_ingest",
        "Stack ingest = `ingest` on a JSONL catalog: read, decode, encode image + title, write MongoDB + Qdrant, in "
        f"batches of {BATCH}. Encoders only = the stack's in-process encoder on the same photos and titles in the "
        f"same batches, nothing written. Baseline = PyTorch eager on the same photos and titles in batches of {BATCH} "
        "(batched: one model call per batch; per-row: one per input), results kept in a dict. The service runs "
        "INT8 per-row (batch-independent vectors) and FP32 batched; 'stack: encoders only, INT8 batched' is "
        f"timed only to isolate what per-row costs. Median of {ingest_rounds} rounds, each running every row in "
        "turn (fresh stores for each stack ingest).\n"
        + "Ratios, the first named over the second (>1: faster), each between runs that differ in one thing: "
        + "; ".join(
            f"{what}: {rates[a] / rates[b]:.2f}x" for a, b, what in INGEST_COMPARISONS if a in rates and b in rates
        )
        + ".",
    )
