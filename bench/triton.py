"""Triton vs in-process: throughput and latency at 1, 8 and 32 concurrent callers, tensors vs bytes.

On this machine Triton is the bundled CPU build (python backend running the same INT8 ONNX with onnxruntime)
sharing the cores with the client, so the table measures protocol, preprocessing placement and batching, not
a GPU. Each request is one 640x480 JPEG (what a shopper's query is).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

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
    from pipeline.config import Settings
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.encoders.triton import TritonEncoder
    from pipeline.types import Precision

    images = [photo(i) for i in range(64)]
    mean_jpeg = statistics.mean(len(b) for b in images)
    rows = []
    encoders: list[tuple[str, Any, str]] = [
        ("in-process onnxruntime (baseline)", OnnxEncoder.load(repo, precision=Precision.INT8), "0"),
    ]
    for send in ("tensors", "bytes"):
        settings = Settings(encoder={"model_repository": repo}, triton={"url": url, "send": send, "timeout_s": 60})
        enc = await TritonEncoder.connect(settings, Precision.INT8)
        per_image = 3 * 224 * 224 * 4 if send == "tensors" else mean_jpeg
        encoders.append((f"Triton gRPC, {send}", enc, f"{per_image / 1024:.0f} KB"))
    for name, enc, sent in encoders:
        await enc.encode_images(images[:4])  # warm-up
        for callers in callers_list:
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
        await enc.aclose()
    return rows


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
        "Image embedding through Triton vs in-process (ViT-B/32 shapes, INT8, one 640x480 JPEG per request)",
        ["encoder", "callers", "images/s", "p50 ms", "p99 ms", "sent per image", "throughput vs in-process"],
        rows,
        "triton",
        "CPU-only machine: Triton here is the bundled build with the python backend (the cpu_test configs) on the "
        "same 2 cores as the client, so this measures the protocol, where preprocessing runs and dynamic "
        "batching, not GPU speed. 'bytes' ships the JPEG (decoded on the server); 'tensors' ships 588 KB of FP32.",
    )
