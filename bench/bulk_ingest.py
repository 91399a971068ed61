"""Bulk ingest throughput: does a bulk ingest keep the encoder busy?

Four runs at one precision and one batch size, on the same machine, in the same process, each round running
all four in turn (the order rotates from round to round):

(a) the raw encoder: the stack's in-process encoder on photos already in memory, ``encode_images`` then
    ``encode_texts`` per batch, nothing fetched, nothing written;
(a') the same, called as the ingest calls it (one ``encode_images`` per photo, a batch's all at once, so the
    encoder's decodes overlap its model calls): what the ingest's encoding alone could give;
(b) bulk ingest through ``IngestService.upsert_stream``: a JSONL catalog whose images are URLs on a local HTTP
    server (another process, answering each request after a fixed delay that stands for a real image host),
    into the real stores (Qdrant Edge, a managed mongod), fresh for every run;
(c) the same catalog through the sequential loop it replaces, ``upsert()`` one batch after the other (the
    named baseline).

(b)/(a) is how busy a bulk ingest keeps the encoder; (b)/(a') what fetching, writing and bookkeeping cost
on top of the same encoder calls; (b)/(c) what the pipelining gains. ViT-B/32 shapes with
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

import psutil

from bench.common import RESULTS, show
from bench.data import photo, product
from bench.encoders import ensure_vit_b32

BATCH = 32  # PIPELINE__INGEST__BATCH_SIZE's default: the ingest's batch and the raw encoder's
HEADERS = [
    "run",
    "model (ViT-B/32 shapes)",
    "writes",
    "image host delay",
    "products/s (median)",
    "range",
    "vs (a) raw encoder",
    "vs (a')",
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

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # socketserver's 5 drops SYNs when 8+ connections open at once (1 s retry)

    server = Server(("127.0.0.1", 0), partial(Handler, directory=folder))
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


def _photos(folder: Path, n: int) -> tuple[list[bytes], list[str]]:
    """n 640x480 JPEGs written to ``folder``/img (for the image host) and kept in memory (for the encoder),
    with the titles of their products."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    photos = []
    for i in range(n):
        photos.append(photo(i))
        (folder / "img" / f"{i}.jpg").write_bytes(photos[-1])
    return photos, [product(i, ["-"]).embedding_text() for i in range(n)]


def _settings(repo: Path, root: Path, precision: str) -> Any:
    from pipeline.config import EncoderSettings, IngestSettings, MongoSettings, QdrantSettings, Settings
    from pipeline.types import Precision

    return Settings(
        encoder=EncoderSettings(model_repository=repo, precision=Precision(precision)),
        qdrant=QdrantSettings(path=root / "qdrant"),
        mongo=MongoSettings(data_dir=root / "mongo"),
        ingest=IngestSettings(batch_size=BATCH),
    )


async def _raw(repo: Path, precision: str, photos: list[bytes], texts: list[str], per_product: bool) -> float:
    """The encoder alone on photos in memory. ``per_product``: one encode_images per photo, all of a batch at
    once, as the ingest calls it (the decodes then overlap the model calls); else one call for the batch."""
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.types import Precision

    encoder = OnnxEncoder.load(repo, precision=Precision(precision))
    try:
        await encoder.encode_images(photos[:2])
        await encoder.encode_texts(texts[:2])
        start = time.perf_counter()
        for s in range(0, len(photos), BATCH):
            if per_product:
                await asyncio.gather(*(encoder.encode_images([b]) for b in photos[s : s + BATCH]))
            else:
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


BUSY = 0.10  # a run during which other processes used more of the machine's CPU than this was disturbed


def _machine_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))


def _own_s() -> float:
    """CPU seconds of this process and its children (the image host, the managed mongods), ended ones included."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    """``fn()``'s result and the share of the machine's CPU other processes used meanwhile."""
    start, machine, own = time.perf_counter(), _machine_s(), _own_s()
    result = fn()
    wall = time.perf_counter() - start
    other = (_machine_s() - machine) - (_own_s() - own)
    return result, max(0.0, other / (wall * (os.cpu_count() or 1)))


def _ratio(a: list[float], b: list[float]) -> str:
    """The median of the per-round ratios (each divides two runs of the same round, minutes apart at most, so
    a change of the shared machine's load between rounds cancels), and their range."""
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def _write_catalog(folder: Path, name: str, base: str, n: int) -> Path:
    catalog = folder / f"{name}.jsonl"
    rows = [product(i, [f"{base}/img/{i}.jpg"]).model_dump(mode="json") for i in range(n)]
    catalog.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return catalog


def run(
    n: int = 192,
    rounds: int = 5,
    delays_ms: tuple[float, ...] = (20.0, 200.0),
    precisions: tuple[str, ...] = ("int8",),
) -> None:
    """``delays_ms``: the image host's delay before each answer; each gets its own (b) and (c) rows, all
    against the same round's (a) and (a')."""
    from pipeline.config import IngestSettings

    begun, t0, load_before = datetime.now(UTC), time.perf_counter(), os.getloadavg()
    repo = ensure_vit_b32()
    defaults = IngestSettings()
    measured: dict[tuple[str, str], list[float]] = {}
    others: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as hosts:
        root = Path(tmp)
        photos, texts = _photos(root / "www", n)
        warm = (photos[0], texts[0])
        runs: dict[str, Callable[[str, int], float]] = {
            "raw": lambda p, r: asyncio.run(_raw(repo, p, photos, texts, False)),
            "raw per product": lambda p, r: asyncio.run(_raw(repo, p, photos, texts, True)),
        }
        for d in delays_ms:
            catalog = _write_catalog(root, f"catalog-{d:g}", hosts.enter_context(image_host(root / "www", d / 1000)), n)
            for mode, pipelined in (("stream", True), ("sequential", False)):

                def ingest(p: str, r: int, c: Path = catalog, key: str = f"{mode} {d:g}", s: bool = pipelined) -> float:
                    settings = _settings(repo, root / f"{key}-{p}-{r}".replace(" ", "-"), p)
                    return asyncio.run(_ingest(settings, c, warm, n, s))

                runs[f"{mode} {d:g}"] = ingest
        keys = list(runs)
        for r in range(rounds):
            for p in precisions:
                shift = r % len(keys)
                for key in keys[shift:] + keys[:shift]:  # the order rotates: drifts reach every run
                    rate, other = _timed(partial(runs[key], p, r))
                    measured.setdefault((p, key), []).append(rate)
                    others.append(other)
    rows = []

    def cells(v: list[float]) -> list[str]:
        return [f"{statistics.median(v):.1f}", f"{min(v):.1f}-{max(v):.1f}"]

    for p in precisions:
        raw, each = measured[p, "raw"], measured[p, "raw per product"]
        calls = "per-row (1 input per call)" if p == "int8" else f"batched ({BATCH} per call)"
        label = f"ONNX {p.upper()}, {calls}"
        rows += [
            ["(a) raw encoder: encode_images + encode_texts per batch, photos in memory", label, "none", "",
             *cells(raw), "1.00x", _ratio(raw, each), ""],
            ["(a') raw encoder called as the ingest calls it: one encode_images per photo", label, "none", "",
             *cells(each), _ratio(each, raw), "1.00x", ""],
        ]  # fmt: skip
        for d in delays_ms:
            stream, seq = measured[p, f"stream {d:g}"], measured[p, f"sequential {d:g}"]
            rows += [
                ["(b) bulk ingest: upsert_stream (pipelined)", label, "MongoDB + Qdrant Edge", f"{d:g} ms",
                 *cells(stream), _ratio(stream, raw), _ratio(stream, each), _ratio(stream, seq)],
                ["(c) baseline: upsert() per batch, one after the other", label, "MongoDB + Qdrant Edge", f"{d:g} ms",
                 *cells(seq), _ratio(seq, raw), _ratio(seq, each), "1.00x"],
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
        f"call (the {BATCH} JPEGs as bytes, decoded inside) then one encode_texts (the titles). (a') = the same "
        "encoder on the same bytes called as the ingest calls it: per batch one encode_images per photo, all at once "
        "(the encoder's decodes then overlap its model calls; a bad photo fails only its own call), then one "
        "encode_texts; nothing fetched, nothing written. (b) and (c) read a JSONL catalog whose images are URLs on "
        "a local HTTP server in another process, which answers each request after the delay shown (standing for a "
        "real image host: a near one, a slow or far one), and write MongoDB (a managed mongod) + Qdrant Edge, "
        f"fresh stores per run; settings as shipped: prefetch_batches {defaults.prefetch_batches}, "
        f"per_host_concurrency {defaults.per_host_concurrency}, retries {defaults.retries}. Each ingest's encoder "
        f"is warmed as (a)'s is (two images, two texts, untimed). Median of {rounds} rounds, each running every row "
        "in turn per precision (the order rotating); ratio cells = the median of the per-round ratios (their "
        f"range). Other processes (other engineers' work on this shared machine) used {statistics.median(others):.0%} "
        f"of its CPU during a run (median; {min(others):.0%}-{max(others):.0%}), over {BUSY:.0%} during "
        f"{sum(x > BUSY for x in others)} of {len(others)} runs; {run_line}.",
    )


if __name__ == "__main__":
    _serve(sys.argv[1], float(sys.argv[2]))
