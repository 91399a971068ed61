"""Triton vs in-process: throughput and latency at 1, 8 and 32 concurrent callers, tensors vs bytes.

On this machine Triton is the bundled CPU build (python backend running the same INT8 ONNX with onnxruntime)
sharing the cores with the client, so the table measures the protocol and where preprocessing runs, not a GPU.
Both sides run INT8 per-row: the in-process encoder and the Triton INT8 model each run one input per
onnxruntime call (batch-independent vectors), though both still queue concurrent callers together, so the
ratio compares the same model work. Each request is one 640x480 JPEG (what a shopper's query is).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Literal

import numpy as np

from bench.common import show
from bench.data import photo
from bench.encoders import ensure_vit_b32


async def _drive(encoder: Any, callers: int, seconds: float, images: list[bytes]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def caller(k: int) -> None:
        i = k
        while time.monotonic() < end:
            t = time.perf_counter()
            await encoder.encode_images([images[i % len(images)]])
            latencies.append((time.perf_counter() - t) * 1000)
            i += callers

    start = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    return len(latencies) / (time.perf_counter() - start), latencies


async def _measure(repo: Any, url: str, callers_list: tuple[int, ...], seconds: float) -> list[list[str]]:
    from pipeline.config import EncoderSettings, Settings, TritonSettings
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.encoders.triton import TritonEncoder
    from pipeline.types import Precision

    images = [photo(i) for i in range(64)]
    mean_jpeg = statistics.mean(len(b) for b in images)
    rows = []
    encoders: list[tuple[str, Any, str]] = [
        ("in-process onnxruntime (baseline)", OnnxEncoder.load(repo, precision=Precision.INT8), "0 KB"),
    ]
    sends: tuple[Literal["tensors", "bytes"], ...] = ("tensors", "bytes")
    for send in sends:
        settings = Settings(
            encoder=EncoderSettings(model_repository=repo),
            triton=TritonSettings(url=url, send=send, timeout_s=60),
        )
        enc = await TritonEncoder.connect(settings, Precision.INT8)
        per_image = 3 * 224 * 224 * 4 if send == "tensors" else mean_jpeg
        encoders.append((f"Triton gRPC, {send}", enc, f"{per_image / 1024:.0f} KB"))
    for _, enc, _ in encoders:
        await enc.encode_images(images[:4])  # warm-up
    # Callers outermost: the rows a ratio divides are measured one right after the other.
    for callers in callers_list:
        for name, enc, sent in encoders:
            await enc.encode_images(images[:2])  # untimed: the previous encoder's threads wind down
            rate, lat = await _drive(enc, callers, seconds, images)
            rows.append(
                [
                    name,
                    str(callers),
                    f"{rate:.1f}",
                    f"{np.percentile(lat, 50):.0f}",
                    f"{np.percentile(lat, 99):.0f}",
                    sent,
                ]
            )
    for _, enc, _ in encoders:
        await enc.aclose()
    order = [name for name, _, _ in encoders]
    return sorted(rows, key=lambda r: (order.index(r[0]), int(r[1])))


def run(callers: tuple[int, ...] = (1, 8, 32), seconds: float = 8.0) -> None:
    from pipeline.triton.server import LocalTriton, unsupported_reason

    reason = unsupported_reason()
    if reason:
        print(f"bench triton: skipped, {reason}")
        return
    repo = ensure_vit_b32()
    with LocalTriton(repo, log_file=repo.parent / "triton-bench.log") as server:
        rows = asyncio.run(_measure(repo, server.grpc_url, callers, seconds))
    base = {r[1]: float(r[2]) for r in rows if "baseline" in r[0]}
    for r in rows:
        r.append(f"{float(r[2]) / base[r[1]]:.2f}x")
    show(
        "Image embedding through Triton vs in-process (ViT-B/32 shapes, INT8 per-row on both, one 640x480 JPEG per "
        "request)",
        ["encoder", "callers", "images/s", "p50 ms", "p99 ms", "sent per image", "images/s over in-process"],
        rows,
        "triton",
        "CPU-only machine: Triton here is the bundled build with the python backend (the cpu_test configs) on the "
        "same cores as the client, so this measures the protocol and where preprocessing runs, not GPU speed. "
        "INT8 per-row on both sides: the client sends one image per request and the server's INT8 model runs each "
        "item of a dynamic batch as its own onnxruntime call, as the in-process encoder does (its micro-batcher "
        "queues concurrent callers together, then runs one input per call): no model call sees two images on "
        "either side. Ratio = this row's images/s over in-process at the same number of callers. 'bytes' ships "
        "the JPEG (decoded on the server); 'tensors' ships 588 KB of FP32 (decoded in the client).",
    )
