"""Blocking work stays off the event loop: file reads, parsing and stats run in threads."""

from __future__ import annotations

import threading

import pipeline.ingest as ingest_module
from pipeline.catalog import read_catalog


async def test_catalog_parsing_and_image_stats_run_off_the_loop(stack, catalog, monkeypatch):
    loop_thread = threading.current_thread()
    seen: dict[str, set[bool]] = {"parse": set(), "stat": set()}

    def parse(path, *args):
        for row in read_catalog(path, *args):
            seen["parse"].add(threading.current_thread() is loop_thread)
            yield row

    identity = ingest_module.image_identity

    def stat(ref):
        seen["stat"].add(threading.current_thread() is loop_thread)
        return identity(ref)

    monkeypatch.setattr(ingest_module, "read_catalog", parse)
    monkeypatch.setattr(ingest_module, "image_identity", stat)
    report = await stack.ingest.ingest(catalog)
    assert report.added > 0
    assert seen == {"parse": {False}, "stat": {False}}


async def test_encoder_close_does_not_block_the_loop(model_repository, monkeypatch):
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.types import Precision

    encoder = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    await encoder.encode_texts(["red mug"])
    loop_thread = threading.current_thread()
    where: list[bool] = []
    shutdown = encoder._infer.shutdown

    def recorded(*args, **kwargs):
        where.append(threading.current_thread() is loop_thread)
        return shutdown(*args, **kwargs)

    monkeypatch.setattr(encoder._infer, "shutdown", recorded)
    await encoder.aclose()
    assert where == [False]
