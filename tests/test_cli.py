"""`python -m pipeline embed` as a user runs it: JSON out, one line of error and a non-zero exit on bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.encoders.onnx import OnnxEncoder
from pipeline.manifest import sha256_file
from pipeline.types import Precision
from tests.conftest import run_cli
from tests.images import encode, noise_image


async def test_embed_texts_json(model_repository, tiny_checkpoint):
    proc = run_cli(
        "embed",
        "--model-repository",
        str(model_repository),
        "--precision",
        "fp32",
        "--text",
        "red mug",
        "--text",
        "blue striped t-shirt",
    )
    doc = json.loads(proc.stdout)
    assert doc["precision"] == "fp32" and doc["dim"] == 32
    # Named by its source folder and the start of its fingerprint: the hash of the two FP32 graphs on disk.
    fp32 = [sha256_file(model_repository / m / "1" / "model.onnx") for m in ("clip_text", "clip_visual")]
    fingerprint = hashlib.sha256("".join(fp32).encode()).hexdigest()
    assert doc["model"] == f"{tiny_checkpoint.name}@{fingerprint[:12]}"
    vectors = np.asarray(doc["vectors"], np.float32)
    encoder = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    try:
        expected = await encoder.encode_texts(["red mug", "blue striped t-shirt"])
    finally:
        await encoder.aclose()
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_embed_images_default_precision(model_repository, tmp_path):
    paths = []
    for i, size in enumerate([(640, 480), (200, 300)]):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(encode(noise_image(*size, seed=i), "JPEG"))
        paths += ["--image", str(path)]
    doc = json.loads(run_cli("embed", "--model-repository", str(model_repository), *paths).stdout)
    assert doc["precision"] == "int8" and len(doc["vectors"]) == 2
    assert np.allclose(np.linalg.norm(doc["vectors"], axis=1), 1.0, atol=1e-3)


def test_embed_reads_repository_from_settings_env(model_repository, monkeypatch):
    monkeypatch.setenv("PIPELINE__ENCODER__MODEL_REPOSITORY", str(model_repository))
    monkeypatch.setenv("PIPELINE__ENCODER__PRECISION", "fp16")
    doc = json.loads(run_cli("embed", "--text", "red mug").stdout)
    assert doc["precision"] == "fp16"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda repo, tmp: ["--text", "  "], "text 0: empty text"),
        (lambda repo, tmp: ["--image", str(tmp / "missing.jpg")], "missing.jpg: cannot read"),
        (lambda repo, tmp: ["--image", str(_write(tmp / "corrupt.jpg", b"\xff\xd8\xff garbage"))], "corrupt.jpg: not"),
        (
            lambda repo, tmp: ["--image", str(_write(tmp / "cut.jpg", encode(noise_image(99, 99), "JPEG")[:300]))],
            "cut.jpg: not a readable image",
        ),
        (lambda repo, tmp: [], "give either --text or --image"),
        (lambda repo, tmp: ["--text", "x", "--image", "y.jpg"], "give either --text or --image"),
    ],
)
def test_embed_bad_input(model_repository, tmp_path, make_args, message):
    proc = run_cli(
        "embed", "--model-repository", str(model_repository), *make_args(model_repository, tmp_path), check=False
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_embed_huge_image_refused(model_repository, tmp_path):
    path = _write(tmp_path / "bomb.png", encode(noise_image(10, 10).resize((7000, 7000))))
    proc = run_cli("embed", "--model-repository", str(model_repository), "--image", str(path), check=False)
    assert proc.returncode == 1 and "bomb.png: 7000x7000 pixels is over the limit" in proc.stderr


def test_embed_missing_repository_or_precision(model_repository, tmp_path):
    proc = run_cli("embed", "--model-repository", str(tmp_path), "--text", "x", check=False)
    assert proc.returncode == 1 and "manifest.json not found" in proc.stderr
    only = tmp_path / "int8"
    from tests.conftest import run_cli as cli

    cli(
        "export",
        "--model",
        str(json.loads((model_repository / "manifest.json").read_text())["source"]),
        "--out",
        str(only),
        "--precision",
        "int8",
    )
    proc = run_cli("embed", "--model-repository", str(only), "--precision", "fp32", "--text", "x", check=False)
    assert proc.returncode == 1 and "no fp32 variant" in proc.stderr and "exported: int8" in proc.stderr


def _write(path, data):
    path.write_bytes(data)
    return path
