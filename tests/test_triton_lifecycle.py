"""Model versions on a real tritonserver in explicit model-control mode: a later version is written into the
server's second repository and loaded through the model-control API under its own names, served beside the base
version, and unloaded after a switch away from it; a rollback loads the base version's models again."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Settings
from pipeline.encoders.onnx import OnnxEncoder
from pipeline.errors import ModelMismatch
from pipeline.stack import open_stack
from pipeline.triton.server import LocalTriton, unsupported_reason
from pipeline.types import Precision
from tests.conftest import make_settings
from tests.test_triton import IMAGES, TEXTS, _triton_encoder

REASON = unsupported_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"tritonserver cannot run here: {REASON}"),
              pytest.mark.slow]  # fmt: skip


@pytest.fixture(scope="module")
def explicit_triton(model_repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton-explicit")
    server = LocalTriton(model_repository, log_file=folder / "triton.log", explicit=True,
                         versions_repository=folder / "versions").start()  # fmt: skip
    yield server
    server.stop()


def _states(server: LocalTriton) -> dict[str, str]:
    """Each model the server knows of and its state (READY, UNAVAILABLE after an unload)."""
    request = urllib.request.Request(f"{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return {m["name"]: m.get("state", "") for m in json.loads(resp.read())}


async def _in_process(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    encoder = OnnxEncoder.load(repository, precision=Precision.FP32)
    try:
        return await encoder.encode_texts(TEXTS), await encoder.encode_images(IMAGES)
    finally:
        await encoder.aclose()


async def _version_encoder(server: LocalTriton, repository: Path, tag: str, send: str = "bytes"):
    from pipeline.encoders.triton import TritonEncoder

    settings = Settings(encoder={"model_repository": repository},
                        triton={"url": server.grpc_url, "send": send,
                                "versions_repository": server.versions_repository})  # fmt: skip
    return await TritonEncoder.connect(settings, Precision.FP32, tag=tag)


async def test_a_version_is_loaded_beside_the_base_and_unloaded(explicit_triton, model_repository, other_repository):
    other, base = await _in_process(other_repository), await _in_process(model_repository)
    url = explicit_triton.grpc_url
    v2 = await _version_encoder(explicit_triton, other_repository, "v2", "bytes")
    v2_tensors = await _version_encoder(explicit_triton, other_repository, "v2", "tensors")  # the same models
    base_encoder = await _triton_encoder(model_repository, url, send="bytes")
    try:
        states = _states(explicit_triton)
        for name in ("clip_visual__v2", "clip_text__v2", "tokenize_text__v2", "clip_text_strings_fp32__v2"):
            assert states[name] == "READY", states
        # both versions answer side by side, each with its own model's vectors
        np.testing.assert_allclose(await v2.encode_texts(TEXTS), other[0], atol=1e-5)
        np.testing.assert_allclose(await v2.encode_images(IMAGES), other[1], atol=1e-5)
        np.testing.assert_allclose(await v2_tensors.encode_texts(TEXTS), other[0], atol=1e-5)
        np.testing.assert_allclose(await v2_tensors.encode_images(IMAGES), other[1], atol=1e-5)
        np.testing.assert_allclose(await base_encoder.encode_texts(TEXTS), base[0], atol=1e-5)
        await v2.unload_models()
        states = _states(explicit_triton)
        assert states.get("clip_visual__v2") != "READY" and states["clip_visual"] == "READY", states
        assert not (explicit_triton.versions_repository / "clip_visual__v2").exists()  # its files removed
        np.testing.assert_allclose(await base_encoder.encode_images(IMAGES), base[1], atol=1e-5)
        # the models gone (unloaded, or a server restarted since): the next use loads them again
        np.testing.assert_allclose(await v2.encode_texts(TEXTS[:2]), other[0][:2], atol=1e-5)
    finally:
        await v2.unload_models()
        await asyncio.gather(v2.aclose(), v2_tensors.aclose(), base_encoder.aclose())


async def test_a_version_the_server_cannot_load_is_refused(explicit_triton, other_repository, tmp_path):
    broken = tmp_path / "repo"
    shutil.copytree(other_repository, broken)
    (broken / "clip_visual" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelMismatch, match=r"could not load them: .* refused to load 'clip_visual__v3'"):
        await _version_encoder(explicit_triton, broken, "v3")
    assert _states(explicit_triton).get("clip_visual__v3") != "READY"


async def test_switch_and_rollback_on_triton(explicit_triton, model_repository, other_repository, tmp_path,
                                             mongo_uri, catalog):  # fmt: skip
    """Activating a version loads its models before the switch and unloads the old ones after the drain; a
    rollback loads the base version's models again."""
    from pipeline.lifecycle.activate import activate, add_version

    settings = make_settings(model_repository, "edge", tmp_path, mongo_uri, ingest={"batch_size": 8},
                             triton={"url": explicit_triton.grpc_url,
                                     "versions_repository": explicit_triton.versions_repository},
                             models={"heldout_every": 3, "max_regression": 1.0, "drain_s": 0.2})  # fmt: skip
    other = await _in_process(other_repository)
    async with open_stack(settings) as stack:
        assert stack.encoder.info.backend == "triton"
        await stack.ingest.ingest(catalog)
        v2 = await add_version(stack, other_repository)
        result = await activate(stack, v2.version)
        assert result["activated"] and stack.gen.name == v2.version
        answer = await stack.search.search_text(TEXTS[0])
        assert answer.generation == v2.version and answer.hits
        np.testing.assert_allclose(await stack.encoder.encode_texts(TEXTS[:1]), other[0][:1], atol=1e-5)
        await _until(lambda: _states(explicit_triton).get("clip_visual") == "UNAVAILABLE")  # v1 drained
        assert _states(explicit_triton)[f"clip_visual__{v2.version}"] == "READY"

        back = await activate(stack, "v1")
        assert back["rollback"] and stack.gen.name == "v1"
        assert (await stack.search.search_text(TEXTS[0])).generation == "v1"
        await _until(lambda: _states(explicit_triton).get(f"clip_visual__{v2.version}") != "READY")
        # its files go once every model of it is unloaded (the drain unloads them one by one, then removes them)
        await _until(lambda: not list(explicit_triton.versions_repository.glob(f"*__{v2.version}")))
        assert _states(explicit_triton)["clip_visual"] == "READY"
        assert (await stack.status())["in_agreement"]


async def _until(condition, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  (an outside server's state: nothing to wait on but a poll)
            await asyncio.sleep(0.1)
