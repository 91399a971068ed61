"""The Triton client's handling of gRPC errors, against a fake server (no tritonserver needed): which statuses
are the caller's bad input, which are server faults (EncoderUnavailable, then the in-process fallback), and that
the model check runs again before Triton is used after a failure. The real server is in test_triton.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from pipeline.config import Settings
from pipeline.encoders.onnx import OnnxEncoder
from pipeline.encoders.triton import TritonEncoder
from pipeline.errors import EncoderUnavailable, InvalidInput, ModelMismatch
from pipeline.manifest import load_manifest
from pipeline.types import Precision

TEXTS = ["red mug", "blue striped shirt"]
_TYPES = {"int64": "INT64", "float32": "FP32"}


class FakeTriton:
    """Answers the model check from the manifest; ``infer`` raises the queued errors, then answers unit rows."""

    def __init__(self, manifest: Any, errors: list[tuple[str | None, str]], fingerprint: str | None = None) -> None:
        self.manifest, self.errors = manifest, list(errors)
        self.fingerprint = fingerprint or manifest.fingerprint
        self.infers = self.checks = 0
        self.calls: list[tuple[str, str, int]] = []  # (model, version, rows) per infer

    async def is_server_live(self, client_timeout: float) -> bool:
        self.checks += 1
        return True

    async def is_model_ready(self, name: str, client_timeout: float) -> bool:
        return True

    async def get_model_metadata(self, name: str, version: str, as_json: bool, client_timeout: float) -> dict:
        spec = next(
            s for s in self.manifest.models.values() if any(v.triton_model == name for v in s.variants.values())
        )

        def tensors(ts: Any) -> list[dict]:
            return [{"name": t.name, "datatype": _TYPES[t.dtype], "shape": [str(d) for d in t.shape]} for t in ts]

        return {"inputs": tensors(spec.inputs), "outputs": tensors(spec.outputs)}

    async def get_model_config(self, name: str, version: str = "", **_: Any) -> dict:
        return {"config": {"max_batch_size": 8, "parameters": {"fingerprint": {"string_value": self.fingerprint}}}}

    async def infer(self, model: str, inputs: list[Any], model_version: str = "", **_: Any) -> Any:
        self.infers += 1
        if self.errors:
            status, message = self.errors.pop(0)
            raise InferenceServerException(message, status=status)
        rows, dim = inputs[0].shape()[0], self.manifest.dim
        self.calls.append((model, model_version, rows))

        class Result:
            def as_numpy(self, output: str) -> np.ndarray:
                return np.full((rows, dim), dim**-0.5, np.float32)

        return Result()

    async def close(self) -> None:
        pass


def _settings(model_repository: Any, fallback: bool = False, send: str = "tensors") -> Settings:
    return Settings(
        encoder={"model_repository": model_repository},
        triton={"url": "fake:8001", "send": send, "fallback": fallback, "fallback_cooldown_s": 0, "backoff_s": 0},
    )


def _encoder(
    model_repository: Any,
    fake_errors: list,
    fallback: bool = False,
    precision: Precision = Precision.FP32,
    send: str = "tensors",
    **fake: Any,
) -> TritonEncoder:
    settings = _settings(model_repository, fallback, send)
    manifest = load_manifest(model_repository)
    return TritonEncoder(FakeTriton(manifest, fake_errors, **fake), manifest, precision, settings, {})


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("StatusCode.INVALID_ARGUMENT", "text 0: empty text"),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'input_ids'"),
        ("StatusCode.OUT_OF_RANGE", "index out of range"),
        ("StatusCode.RESOURCE_EXHAUSTED", "Sent message larger than max (2147483648 vs. 2147483647)"),
    ],
)
@pytest.mark.parametrize("fallback", [False, True])
async def test_bad_input_statuses_are_invalid_input_and_never_fall_back(model_repository, status, message, fallback):
    encoder = _encoder(model_repository, [(status, message)], fallback=fallback)
    try:
        with pytest.raises(InvalidInput, match="Triton refused the request"):
            await encoder.encode_texts(TEXTS)
        assert encoder._client.infers == 1 and not encoder.using_fallback
    finally:
        await encoder.aclose()


SERVER_FAULTS = [
    ("StatusCode.INTERNAL", "onnxruntime: CUDA out of memory"),
    ("StatusCode.UNKNOWN", "python backend stub died"),
    ("StatusCode.RESOURCE_EXHAUSTED", "request queue is full"),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'clip_text' is not found"),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses"),
    ("StatusCode.CANCELLED", "server shutting down"),
    (None, "client-side failure"),
]


@pytest.mark.parametrize(("status", "message"), SERVER_FAULTS)
async def test_server_faults_are_encoder_unavailable(model_repository, status, message):
    encoder = _encoder(model_repository, [(status, message)] * 10)
    try:
        with pytest.raises(EncoderUnavailable, match=r"Triton at fake:8001: clip_text: .*" + message[:10]):
            await encoder.encode_texts(TEXTS)
    finally:
        await encoder.aclose()


@pytest.fixture(scope="module")
async def in_process(model_repository):
    encoder = OnnxEncoder.load(model_repository, precision=Precision.FP32)
    texts = await encoder.encode_texts(TEXTS)
    await encoder.aclose()
    return texts


@pytest.mark.parametrize(("status", "message"), SERVER_FAULTS)
async def test_server_faults_fall_back_and_the_model_is_checked_again(model_repository, in_process, status, message):
    encoder = _encoder(model_repository, [(status, message)] * 4, fallback=True)
    fake = encoder._client
    try:
        np.testing.assert_allclose(await encoder.encode_texts(TEXTS), in_process, atol=1e-6)  # answered in-process
        assert fake.checks == 1
        fake.errors.clear()
        # Cooldown 0: Triton is tried again, and checked again first (it may have come back with another model).
        assert (await encoder.encode_texts(TEXTS)).shape == (2, in_process.shape[1])
        assert fake.checks == 2 and not encoder.using_fallback
        await encoder.encode_texts(TEXTS)
        assert fake.checks == 2  # no failure since: not checked again
    finally:
        await encoder.aclose()


async def test_unavailable_is_retried_before_anything_else(model_repository):
    encoder = _encoder(model_repository, [("StatusCode.UNAVAILABLE", "connection reset")])
    try:
        assert (await encoder.encode_texts(TEXTS)).shape[0] == 2
        assert encoder._client.infers == 2
    finally:
        await encoder.aclose()


async def test_server_back_with_another_model_is_refused(model_repository):
    encoder = _encoder(model_repository, [("StatusCode.INTERNAL", "crash")], fallback=True)
    try:
        await encoder.encode_texts(TEXTS)  # fell back
        encoder._client.fingerprint = "f" * 64  # the server came back serving another export
        with pytest.raises(ModelMismatch, match="serves another model"):
            await encoder.encode_texts(TEXTS)
        assert encoder._client.infers == 1
    finally:
        await encoder.aclose()


def test_error_classes_travel_as_503_and_422():
    from pipeline.encoders.triton import request_error
    from pipeline.errors import wire_code

    internal = request_error(InferenceServerException("boom", status="StatusCode.INTERNAL"), "t:8001", "m")
    invalid = request_error(InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"), "t:8001", "m")
    assert wire_code(internal) == ("encoder_unavailable", 503) and wire_code(invalid) == ("invalid_input", 422)


async def test_channel_reconnects_within_seconds_and_keeps_tritonclients_defaults(model_repository, monkeypatch):
    """gRPC's default reconnect backoff grows to 120 s: after Triton comes back, requests would stay on the
    fallback that long. The client caps it; passing channel_args replaces tritonclient's own defaults, so those
    (message size, keepalive) are passed too."""
    import types

    import tritonclient.grpc.aio as real

    from pipeline.encoders import triton as module

    made: list[dict[str, Any]] = []

    def client(**kwargs: Any) -> FakeTriton:
        made.append(kwargs)
        return FakeTriton(load_manifest(model_repository), [])

    fake_module = types.SimpleNamespace(
        InferenceServerClient=client,
        KeepAliveOptions=real.KeepAliveOptions,
        MAX_GRPC_MESSAGE_SIZE=real.MAX_GRPC_MESSAGE_SIZE,
    )
    monkeypatch.setattr(module, "_grpc", lambda: fake_module)
    encoder = await TritonEncoder.connect(_settings(model_repository), Precision.FP32)
    await encoder.aclose()
    assert len(made) == 1 and made[0]["url"] == "fake:8001"
    options = dict(made[0]["channel_args"])
    assert options["grpc.max_reconnect_backoff_ms"] == 5000
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 2**31 - 1
    assert options["grpc.keepalive_timeout_ms"] == real.KeepAliveOptions().keepalive_timeout_ms
    # The real client accepts them.
    channel = real.InferenceServerClient(url="127.0.0.1:1", channel_args=module.channel_args(real))
    await channel.close()


@pytest.mark.parametrize("send", ["tensors", "bytes"])
async def test_int8_goes_to_its_own_model_one_item_per_request(model_repository, send):
    calls = {}
    for precision in (Precision.INT8, Precision.FP32):
        encoder = _encoder(model_repository, [], precision=precision, send=send)
        try:
            await encoder.encode_texts(["a", "b", "c"])
            calls[precision] = encoder._client.calls
        finally:
            await encoder.aclose()
    if send == "tensors":
        assert calls[Precision.INT8] == [("clip_text_int8", "1", 1)] * 3
        assert calls[Precision.FP32] == [("clip_text", "1", 3)]  # FP32 stays batched
    else:  # the ensembles, which call the INT8 models (see test_export)
        assert calls[Precision.INT8] == [("clip_text_strings_int8", "", 1)] * 3
        assert calls[Precision.FP32] == [("clip_text_strings_fp32", "", 3)]
