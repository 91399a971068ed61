"""The in-process onnxruntime encoder: parity, ordering, micro-batching, bad input, no torch."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.config import EncoderSettings, LimitsSettings
from pipeline.encoders.base import Encoder
from pipeline.encoders.onnx import OnnxEncoder
from pipeline.errors import InvalidInput, ModelError
from pipeline.manifest import load_manifest
from pipeline.preprocess import load_image_tensor
from pipeline.types import Modality, Precision
from tests.images import encode, noise_image


@pytest.fixture
async def fp32(model_repository):
    encoder = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    yield encoder
    await encoder.aclose()


def _reference_texts(reference, texts):
    model, tokenizer, _ = reference
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**tokens)
    return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def _reference_images(reference, images):
    model, _, processor = reference
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


async def test_protocol_and_default_precision(model_repository):
    encoder = OnnxEncoder.load(model_repository)
    try:
        assert isinstance(encoder, Encoder)
        assert encoder.info.precision is Precision.INT8  # CPU default
        assert encoder.info.dim == 32 and encoder.info.backend == "onnxruntime"
    finally:
        await encoder.aclose()


async def test_texts_match_transformers_in_order(fp32, reference):
    texts = ["red mug", "a blue striped cotton t-shirt", "green shoe", "word " * 120]
    out = await fp32.encode_texts(texts)
    np.testing.assert_allclose(out, _reference_texts(reference, texts), atol=1e-4)
    # Same vector whether a text is alone or padded in a batch with a longer one.
    alone = await fp32.encode_texts(["red mug"])
    np.testing.assert_allclose(alone[0], out[0], atol=1e-5)


async def test_images_match_transformers_end_to_end(fp32, reference):
    images = [noise_image(640, 480, seed=1), noise_image(300, 500, seed=2), noise_image(224, 224, seed=3)]
    out = await fp32.encode_images([encode(img) for img in images])
    np.testing.assert_allclose(out, _reference_images(reference, images), atol=1e-4)


async def test_concurrent_callers_are_batched_and_correct(model_repository):
    settings = EncoderSettings(batch_wait_ms=20, max_batch_size=16)
    encoder = OnnxEncoder.load(model_repository, settings, precision=Precision.FP32)
    calls = []
    original = encoder._texts._run
    encoder._texts._run = lambda ids: calls.append(len(ids)) or original(ids)  # count model calls
    try:
        texts = [f"{c} item {i}" for i, c in enumerate(["red", "blue", "green", "black"] * 16)]
        results = await asyncio.gather(*(encoder.encode_texts([t]) for t in texts))
        one_by_one = [await encoder.encode_texts([t]) for t in texts[:8]]
    finally:
        await encoder.aclose()
    assert len(results) == 64 and all(r.shape == (1, 32) for r in results)
    for got, want in zip(results[:8], one_by_one, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    batched_calls = calls[: len(calls) - 8]
    assert len(batched_calls) < 64 and max(batched_calls) <= 16 and sum(batched_calls) == 64


async def test_large_request_is_split(model_repository):
    encoder = OnnxEncoder.load(model_repository, EncoderSettings(max_batch_size=4), precision=Precision.FP32)
    try:
        out = await encoder.encode_texts([f"text {i}" for i in range(10)])
        assert out.shape == (10, 32)
        np.testing.assert_allclose(out[7], (await encoder.encode_texts(["text 7"]))[0], atol=1e-5)
    finally:
        await encoder.aclose()


async def test_bad_inputs_fail_only_their_caller(fp32):
    good = encode(noise_image(300, 300))
    results = await asyncio.gather(
        fp32.encode_images([good]),
        fp32.encode_images([good, b"\x89PNG\r\n\x1a\n broken"]),
        fp32.encode_texts(["red mug"]),
        fp32.encode_texts(["fine", "   "]),
        return_exceptions=True,
    )
    assert results[0].shape == (1, 32) and results[2].shape == (1, 32)
    assert isinstance(results[1], InvalidInput) and "image 1" in str(results[1])
    assert isinstance(results[3], InvalidInput) and "text 1: empty text" in str(results[3])
    assert (await fp32.encode_texts([])).shape == (0, 32)


async def test_missing_precision_is_a_clear_error(model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    manifest = json.loads((repo / "manifest.json").read_text())
    for model in manifest["models"].values():
        del model["variants"]["fp16"]
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"no fp16 variant .*exported: fp32, int8"):
        OnnxEncoder.load(repo, precision=Precision.FP16)


def test_serving_imports_neither_torch_nor_transformers(model_repository):
    code = f"""
import asyncio, sys
from pipeline.encoders.onnx import OnnxEncoder
async def main():
    enc = OnnxEncoder.load({str(model_repository)!r})
    print((await enc.encode_texts(["red mug"])).shape)
    await enc.aclose()
asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["(1, 32)", "[]"]


async def test_int8_vectors_do_not_depend_on_batch_mates(model_repository):
    """Dynamic INT8 scales activations per model call: a product's vector must not depend on who it was embedded
    with, neither inside one request (an ingest batch) nor across concurrent callers."""
    encoder = OnnxEncoder.load(model_repository, EncoderSettings(batch_wait_ms=20), precision=Precision.INT8)
    texts = ["red mug"] + [("word " * (i % 7 * 9)) + f"item {i}" for i in range(31)]
    images = [encode(noise_image(64, 48, seed=i)) for i in range(32)]
    try:
        text_alone = (await encoder.encode_texts(texts[:1]))[0]
        image_alone = (await encoder.encode_images(images[:1]))[0]
        np.testing.assert_allclose((await encoder.encode_texts(texts))[0], text_alone, atol=1e-6, rtol=0)
        np.testing.assert_allclose((await encoder.encode_images(images))[0], image_alone, atol=1e-6, rtol=0)
        crowd = await asyncio.gather(*(encoder.encode_texts([t]) for t in texts[:4]))
        np.testing.assert_allclose(crowd[0][0], text_alone, atol=1e-6, rtol=0)
    finally:
        await encoder.aclose()
    # The effect avoided is real: the same INT8 graph run on the whole batch at once gives another vector.
    manifest = load_manifest(model_repository)
    session = ort.InferenceSession(str(model_repository / manifest.variant(Modality.IMAGE, Precision.INT8).file))
    pixels = np.stack([load_image_tensor(data, manifest.image, LimitsSettings()) for data in images])
    batched = session.run(None, {"pixel_values": pixels})[0][0]
    assert np.abs(batched - image_alone).max() > 1e-4


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_micro_batcher_runs_up_to_its_concurrency_of_model_calls(concurrency):
    """Calls of one batcher overlap up to ``concurrency`` (a queue of photos may use both cores); a failing call
    fails only its callers and frees its slot."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.encoders.batching import MicroBatcher

    lock, running, peak = threading.Lock(), [0], [0]

    def run(items: list[int]) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.15)
        with lock:
            running[0] -= 1
        if -1 in items:
            raise ValueError("bad row")
        return np.array([[i * 2] for i in items])

    pool = ThreadPoolExecutor(max_workers=4)
    batcher = MicroBatcher(run, pool, max_batch=4, wait_s=0, merge=False, concurrency=concurrency)
    try:
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(6)), batcher.submit([-1]),
                                       return_exceptions=True)  # fmt: skip
        assert [r.tolist() for r in results[:6]] == [[[i * 2]] for i in range(6)]
        assert isinstance(results[6], ValueError)
        assert peak[0] == concurrency
        assert (await batcher.submit([7])).tolist() == [[14]]  # the failed call gave its slot back
    finally:
        await batcher.aclose()
        pool.shutdown()


async def test_micro_batcher_closing_fails_its_waiting_callers_and_can_serve_again():
    """Closing while a call runs and more wait (a generation closed after its drain): every caller gets
    EncoderUnavailable at once, none waits forever; the batcher serves again afterwards (no slot lost)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.encoders.batching import MicroBatcher
    from pipeline.errors import EncoderUnavailable

    def run(items: list[int]) -> np.ndarray:
        time.sleep(0.3)
        return np.array([[i] for i in items])

    pool = ThreadPoolExecutor(max_workers=1)
    batcher = MicroBatcher(run, pool, max_batch=2, wait_s=0.05, merge=True, concurrency=1)
    try:
        waiting = [asyncio.create_task(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0.1)  # the first call runs, the others are queued or being gathered
        await asyncio.wait_for(batcher.aclose(), 5)
        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        assert all(isinstance(r, EncoderUnavailable) for r in results), results
        assert (await asyncio.wait_for(batcher.submit([7]), 5)).tolist() == [[7]]
    finally:
        await batcher.aclose()
        pool.shutdown()
