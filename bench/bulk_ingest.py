"""Bulk ingest throughput: does a bulk ingest keep the encoder busy?

Three runs at one precision and one batch size, on the same machine, in the same process, each round running
all three in turn (the order rotates from round to round):

(a) the raw encoder: the stack's in-process encoder on photos already in memory, ``encode_images`` then
    ``encode_texts`` per batch, nothing fetched, nothing written: the most the encoder gives;
(b) bulk ingest through ``IngestService.upsert_stream``: a JSONL catalog whose images are URLs on a local HTTP
    server (another process, answering each request after a fixed delay that stands for a real image host),
    into the real stores (Qdrant Edge, a managed mongod), fresh for every run;
(c) the same catalog through the sequential loop it replaces, ``upsert()`` one batch after the other (the
    named baseline).

(b)/(a) is how busy a bulk ingest keeps the encoder; (b)/(c) what the pipelining gains. ViT-B/32 shapes with
random weights, the model bench/'s other ingestion table uses (throughput does not depend on the weights).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import RESULTS, show
from bench.data import photo, product
from bench.encoders import ensure_vit_b32

BATCH = 32  # PIPELINE__INGEST__BATCH_SIZE's default: the ingest's batch and the raw encoder's
MODES = ("raw", "stream", "sequential")
HEADERS = [
    "run",
    "model (ViT-B/32 shapes)",
    "writes",
    "products/s (median)",
    "range",
    "vs (a) raw encoder",
    "vs (c) sequential upsert",
]


def _serve(folder: str, delay_s: float) -> None:
    """The image host (``python -m bench.bulk_ingest FOLDER DELAY_S``): files of ``folder``, each answered after
    ``delay_s``; prints its port."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as image CDNs answer

        def do_GET(self) -> None:
            time.sleep(delay_s)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=folder))
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def image_host(folder: Path, delay_s: float) -> Iterator[str]:
    """Serve ``folder`` over HTTP on loopback from another process; yields the base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.bulk_ingest", str(folder), str(delay_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait()


def _catalog(folder: Path, base: str, n: int) -> tuple[Path, list[bytes], list[str]]:
    """n products with one 640x480 JPEG each, on the image host for the ingests, in memory for the encoder."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    photos, rows = [], []
    for i in range(n):
        data = photo(i)
        (folder / "img" / f"{i}.jpg").write_bytes(data)
        photos.append(data)
        rows.append(product(i, [f"{base}/img/{i}.jpg"]))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(p.model_dump(mode="json")) for p in rows) + "\n")
    return catalog, photos, [p.embedding_text() for p in rows]


def _settings(repo: Path, root: Path, precision: str) -> Any:
    from pipeline.config import EncoderSettings, IngestSettings, MongoSettings, QdrantSettings, Settings
    from pipeline.types import Precision

    return Settings(
        encoder=EncoderSettings(model_repository=repo, precision=Precision(precision)),
        qdrant=QdrantSettings(path=root / "qdrant"),
        mongo=MongoSettings(data_dir=root / "mongo"),
        ingest=IngestSettings(batch_size=BATCH),
    )


async def _raw(repo: Path, precision: str, photos: list[bytes], texts: list[str]) -> float:
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.types import Precision

    encoder = OnnxEncoder.load(repo, precision=Precision(precision))
    try:
        await encoder.encode_images(photos[:2])
        await encoder.encode_texts(texts[:2])
        start = time.perf_counter()
        for s in range(0, len(photos), BATCH):
            await encoder.encode_images(photos[s : s + BATCH])
            await encoder.encode_texts(texts[s : s + BATCH])
        return len(photos) / (time.perf_counter() - start)
    finally:
        await encoder.aclose()


async def _batches(catalog: Path) -> AsyncIterator[list[Any]]:
    """The catalog's products a batch at a time, read and parsed in a thread (as an ingest job reads it)."""
    from pipeline.catalog import read_catalog

    rows = read_catalog(catalog)
    while chunk := await asyncio.to_thread(list, itertools.islice(rows, BATCH)):
        yield [r.product for r in chunk if r.product is not None]


async def _ingest(settings: Any, catalog: Path, warm: tuple[bytes, str], n: int, stream: bool) -> float:
    from pipeline.stack import open_stack

    async with open_stack(settings) as stack:
        await stack.encoder.encode_images([warm[0]] * 2)  # as the raw run warms up: first calls are slower
        await stack.encoder.encode_texts([warm[1]] * 2)
        statuses: list[str] = []
        start = time.perf_counter()
        if stream:
            async with contextlib.aclosing(stack.ingest.upsert_stream(_batches(catalog))) as batches:
                async for outcomes in batches:
                    statuses += [o.status for o in outcomes]
        else:
            async for batch in _batches(catalog):
                statuses += [o.status for o in await stack.ingest.upsert(batch)]
        seconds = time.perf_counter() - start
    if statuses.count("added") != n:
        raise RuntimeError(f"bulk-ingest bench: expected {n} added, got {sorted(set(statuses))}")
    return n / seconds


def _ratio(a: list[float], b: list[float]) -> str:
    """The median of the per-round ratios (each divides two runs of the same round, minutes apart at most, so
    a change of the shared machine's load between rounds cancels), and their range."""
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def run(n: int = 192, rounds: int = 5, delay_ms: float = 20.0, precisions: tuple[str, ...] = ("int8", "fp32")) -> None:
    from pipeline.config import IngestSettings

    begun, t0, load_before = datetime.now(UTC), time.perf_counter(), os.getloadavg()
    repo = ensure_vit_b32()
    defaults = IngestSettings()
    measured: dict[tuple[str, str], list[float]] = {(p, m): [] for p in precisions for m in MODES}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, image_host(Path(tmp) / "www", delay_ms / 1000) as base:
        catalog, photos, texts = _catalog(Path(tmp) / "www", base, n)
        runs: dict[str, Callable[[str, int], float]] = {
            "raw": lambda p, r: asyncio.run(_raw(repo, p, photos, texts)),
            "stream": lambda p, r: asyncio.run(
                _ingest(_settings(repo, Path(tmp) / f"s-{p}-{r}", p), catalog, (photos[0], texts[0]), n, True)
            ),
            "sequential": lambda p, r: asyncio.run(
                _ingest(_settings(repo, Path(tmp) / f"q-{p}-{r}", p), catalog, (photos[0], texts[0]), n, False)
            ),
        }
        for r in range(rounds):
            for p in precisions:
                for mode in MODES[r % 3 :] + MODES[: r % 3]:  # the order rotates: drifts reach every run
                    measured[p, mode].append(runs[mode](p, r))
                    loads.append(os.getloadavg()[0])
    rows = []
    for p in precisions:
        raw, stream, seq = (measured[p, m] for m in MODES)
        calls = "per-row (1 input per call)" if p == "int8" else f"batched ({BATCH} per call)"
        label = f"ONNX {p.upper()}, {calls}"

        def cells(v: list[float]) -> list[str]:
            return [f"{statistics.median(v):.1f}", f"{min(v):.1f}-{max(v):.1f}"]

        rows += [
            ["(a) raw encoder: encode_images + encode_texts per batch, photos in memory", label, "none", *cells(raw),
             "1.00x", ""],
            ["(b) bulk ingest: upsert_stream (pipelined)", label, "MongoDB + Qdrant Edge", *cells(stream),
             _ratio(stream, raw), _ratio(stream, seq)],
            ["(c) baseline: upsert() per batch, one after the other", label, "MongoDB + Qdrant Edge", *cells(seq),
             _ratio(seq, raw), "1.00x"],
        ]  # fmt: skip
    took = time.perf_counter() - t0
    run_line = (
        f"started {begun:%Y-%m-%d %H:%M} UTC, {took:.0f} s, load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bulk-ingest.run.txt").write_text(run_line)
    show(
        f"Bulk ingest vs the raw encoder, {n} products with one 640x480 JPEG each over HTTP, products/s",
        HEADERS,
        rows,
        "bulk_ingest",
        f"Batches of {BATCH} everywhere. (a) = the stack's in-process encoder alone: per batch one encode_images "
        f"call (the {BATCH} JPEGs as bytes, decoded inside) then one encode_texts (the titles). (b) and (c) read a "
        f"JSONL catalog whose images are URLs on a local HTTP server in another process, which answers each request "
        f"after {delay_ms:g} ms (standing for a real image host), and write MongoDB (a managed mongod) + Qdrant "
        f"Edge, fresh stores per run; settings as shipped: prefetch_batches {defaults.prefetch_batches}, "
        f"per_host_concurrency {defaults.per_host_concurrency}, retries {defaults.retries}. Each ingest's encoder "
        f"is warmed as (a)'s is (two images, two texts, untimed). Median of {rounds} rounds, each running the three "
        "in turn per precision (the order rotating); ratio cells = the median of the per-round ratios (their range)."
        f" Load average (1 min) after each run: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores, above "
        f"the core count (other work shared the machine) after {sum(x > (os.cpu_count() or 1) for x in loads)} of "
        f"{len(loads)} runs; {run_line}.",
    )


if __name__ == "__main__":
    _serve(sys.argv[1], float(sys.argv[2]))
