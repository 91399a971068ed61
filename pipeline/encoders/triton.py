"""Encoder on NVIDIA Triton over gRPC (``tritonclient.grpc.aio``).

Before Triton is first used, and again before it is used after any failure (a fallback, a restart), the client
reads each model's metadata from the server and refuses to run, naming the model and the difference, when tensor
names, shapes or dtypes differ from the manifest, or when the repository the server loaded records another model
fingerprint (``pipeline.encoders.triton_models``). Many callers share one channel; the server's dynamic batcher
merges their requests.

gRPC statuses: INVALID_ARGUMENT and OUT_OF_RANGE (the request's own data: a bad image, a wrong shape) are
InvalidInput; every other status is a server-side fault (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN,
RESOURCE_EXHAUSTED, NOT_FOUND for a model not loaded, ...) and EncoderUnavailable, after which, with
``fallback`` set, requests are answered in-process meanwhile (logged once per switch). UNAVAILABLE is retried
with backoff first.

Each precision is served by the Triton model and version the manifest records (``Manifest.triton_model``).
INT8 has a model of its own with no dynamic batching (batching is configured per model, so as a version of the
batched model the server would merge concurrent callers' items into one call), and its items go one per request
(concurrently): dynamic quantisation scales activations over a whole model call, so a vector must not share a
call with other items. A format-1 repository (INT8 a version of the batched model) is refused for INT8.

The gRPC channel retries a lost connection with at most ``_MAX_RECONNECT_BACKOFF_MS`` between attempts (gRPC's
default grows to 120 s), so a restarted server is used again within seconds of coming back, not minutes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.encoders.base import Encoder, EncoderInfo
from pipeline.encoders.triton_models import ServedModels
from pipeline.errors import EncoderUnavailable, InvalidInput, ModelError, ModelMismatch, PipelineError
from pipeline.export.triton_extras import (
    image_ensemble,
    text_ensemble,
)
from pipeline.manifest import (
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    PER_ITEM,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    Manifest,
    load_manifest,
)
from pipeline.preprocess import TextTokenizer, check_text, load_image_tensor
from pipeline.text_towers import TextTower, TowerPicker
from pipeline.triton.control import (
    multilingual_strings,
    served_name,
)
from pipeline.types import Modality, Precision

log = logging.getLogger(__name__)
_RETRYABLE = {"StatusCode.UNAVAILABLE"}
# The request's own data is at fault; any other status is the server's (or the network's) and may be retried,
# or answered in-process.
_BAD_INPUT = {"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"}
_ITEM = re.compile(r"\b(image|text) (\d+):")
# INT8 requests in flight at once for one call (each carries one item).
_INT8_CONCURRENCY = 64
# The longest wait between the channel's reconnection attempts (gRPC's default backoff grows to 120 s, which
# would keep requests on the fallback that long after the server is back).
_MAX_RECONNECT_BACKOFF_MS = 5000


def _grpc() -> Any:
    import tritonclient.grpc.aio as grpcclient

    return grpcclient


def channel_args(grpcclient: Any) -> list[tuple[str, Any]]:
    """The gRPC channel options: tritonclient's own defaults (message size, keepalive), which passing any
    ``channel_args`` replaces, plus a short reconnect backoff."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
    ]


def request_error(exc: Any, url: str | None, model: str) -> PipelineError:
    """The project's error for a failed Triton call (an ``InferenceServerException``).

    InvalidInput for INVALID_ARGUMENT / OUT_OF_RANGE and for a message over gRPC's size limit (the input's
    size); EncoderUnavailable, naming the server and the status, for everything else.
    """
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if status in _BAD_INPUT or (status == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in message):
        return InvalidInput(f"Triton refused the request to {model}: {message}")
    code = status.removeprefix("StatusCode.") or "client error"
    return EncoderUnavailable(f"Triton at {url}: {model}: {code}: {message}")


def _shift_items(exc: InvalidInput, offset: int) -> InvalidInput:
    """The server names items by their index in one request: renumber them by their index in the caller's list."""
    if not offset:
        return exc
    renamed = _ITEM.sub(lambda m: f"{m[1]} {int(m[2]) + offset}:", str(exc))
    return type(exc)(renamed)


class TritonEncoder:
    def __init__(
        self,
        client: Any,
        manifest: Manifest,
        precision: Precision,
        settings: Settings,
        max_batch: dict[str, int],
        tag: str | None = None,
    ) -> None:
        self._client = client
        self._tag = tag  # the model version's suffix on the server (None: the base version, the export's names)
        self.manifest = manifest
        self.precision = precision
        self._settings = settings
        self._cfg = settings.triton
        self._limits = settings.limits
        self._max_batch = max_batch
        # The Triton model and version serving each tower at this precision (ModelError for INT8 from a format-1
        # repository, where INT8 is a version of the batched model).
        self._models: dict[Modality, tuple[str, str]] = {}
        for modality in Modality:
            name, version = manifest.triton_model(modality, precision)
            self._models[modality] = (served_name(name, tag), str(version))
        self._ensembles = {
            Modality.IMAGE: served_name(image_ensemble(precision), tag),
            Modality.TEXT: served_name(text_ensemble(precision), tag),
        }
        self._tokenizer = TextTokenizer(settings.encoder.model_repository / manifest.text.tokenizer_file, manifest.text)
        # The multilingual text tower (export --text-model): its model and version, and its tokenizer (run here
        # with PIPELINE__TRITON__SEND=tensors, or for an export that predates its bytes-in ensemble).
        self._ml: tuple[str, str, TextTokenizer] | None = None
        self._ml_export: tuple[str, int] | None = None  # its export name and version (what is loaded)
        variant = manifest.served_multilingual(precision, settings.encoder.text_tower, settings.encoder.force_precision)
        if variant is not None and manifest.multilingual is not None:
            self._ml_export = (variant.triton_model, variant.triton_version)
            spec = manifest.multilingual.text
            tokenizer = TextTokenizer(settings.encoder.model_repository / spec.tokenizer_file, spec)
            self._ml = (served_name(variant.triton_model, tag), str(variant.triton_version), tokenizer)
        self._pick = TowerPicker.of(settings.encoder, self._ml is not None)
        strings = multilingual_strings(manifest, self._ml_export)
        self._ml_strings = served_name(strings, tag) if strings and self._cfg.send == "bytes" else None
        self._info = EncoderInfo.of(manifest, precision, "triton", self._ml is not None, self._pick.titles)
        ml = (self._ml[0], self._ml[1]) if self._ml else None
        self._served = ServedModels(client, manifest, precision, settings, tag, self._models, self._ensembles, ml,
                                    self._ml_export, self._ml_strings)  # fmt: skip
        self._fallback: Encoder | None = None
        self._fallback_until = 0.0
        self._fallback_lock = asyncio.Lock()
        # True once the server's models were checked against the manifest; cleared by any failure, since what
        # answers next (a restarted server, another replica) may serve another model.
        self._verified = False
        self._check_lock = asyncio.Lock()
        self.bytes_sent = 0

    @classmethod
    async def connect(
        cls, settings: Settings, precision: Precision | None = None, tag: str | None = None
    ) -> TritonEncoder:
        """Connect and check the server's models against the manifest; ``tag`` names a model version served
        under suffixed names (see ``pipeline.triton.control``). Models the server does not have are loaded
        through its model-control API first (explicit mode).

        Raises EncoderUnavailable when the server cannot be reached (unless fallback is on: then the check runs
        before Triton is first used), ModelMismatch when a model's tensors or the repository's fingerprint
        differ, ModelError when the manifest or the precision is missing, or when the repository serves INT8 as a
        version of the batched model (exported in format 1: re-export).
        """
        manifest = load_manifest(settings.encoder.model_repository)
        have = manifest.precisions()
        precision = (
            precision
            or settings.encoder.precision
            or (Precision.FP16 if Precision.FP16 in have else next(iter(sorted(have))))
        )
        for modality in Modality:
            manifest.triton_model(modality, precision)  # raises ModelError when not exported or not servable here
        manifest.check_servable(precision, settings.encoder.force_precision)
        grpcclient = _grpc()
        client = grpcclient.InferenceServerClient(url=settings.triton.url, channel_args=channel_args(grpcclient))
        encoder = cls(client, manifest, precision, settings, {}, tag)
        try:
            await encoder._ensure_checked()
        except EncoderUnavailable:
            if not settings.triton.fallback:
                await client.close()
                raise
            await encoder._switch_to_fallback("at start-up")
        except ModelMismatch:
            await client.close()
            raise
        return encoder

    # --- model checks ----------------------------------------------------------------------------------------

    async def _ensure_checked(self) -> None:
        """Check the server's models unless they were checked since the last failure (one check at a time: a
        caller that waited for a check that passed does not repeat it). Raises EncoderUnavailable or ModelMismatch."""
        if self._verified:
            return
        async with self._check_lock:
            if not self._verified:
                self._max_batch.update(await self._served.check())
                self._verified = True

    async def unload_models(self) -> None:
        """Unload this version's models from the server (after a switch away from it, once drained)."""
        self._verified = False
        await self._served.unload()

    # --- fallback --------------------------------------------------------------------------------------------

    async def _switch_to_fallback(self, why: str) -> Encoder:
        async with self._fallback_lock:
            if self._fallback is None:
                from pipeline.encoders.onnx import OnnxEncoder

                self._fallback = await asyncio.to_thread(
                    OnnxEncoder.load,
                    self._settings.encoder.model_repository,
                    self._settings.encoder,
                    self._limits,
                    self.precision,
                )
            if time.monotonic() >= self._fallback_until:
                log.warning(
                    "Triton at %s unavailable %s: answering in-process for %.0f s",
                    self._cfg.url,
                    why,
                    self._cfg.fallback_cooldown_s,
                )
            self._fallback_until = time.monotonic() + self._cfg.fallback_cooldown_s
            return self._fallback

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def tower_for(self, text: str) -> TextTower:
        return self._pick(text)

    @property
    def using_fallback(self) -> bool:
        return self._fallback is not None and time.monotonic() < self._fallback_until

    # --- requests --------------------------------------------------------------------------------------------

    async def _infer(
        self, model: str, version: str, inputs: list[tuple[str, np.ndarray, str]], output: str
    ) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        grpcclient = _grpc()
        tensors = []
        for name, array, dtype in inputs:
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        self.bytes_sent += sum(
            a.nbytes if a.dtype != object else sum(len(x) for x in a.reshape(-1)) for _, a, _ in inputs
        )
        delay = self._cfg.backoff_s
        for attempt in range(self._cfg.retries + 1):
            try:
                result = await self._client.infer(
                    model,
                    tensors,
                    model_version=version,
                    outputs=[grpcclient.InferRequestedOutput(output)],
                    client_timeout=self._cfg.timeout_s,
                )
                return result.as_numpy(output)
            except InferenceServerException as exc:
                if exc.status() in _RETRYABLE and attempt < self._cfg.retries:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                raise request_error(exc, self._cfg.url, model) from exc
        raise AssertionError("unreachable")

    async def _chunked(self, model: str, version: str, items: list[Any], build: Any, output: str) -> np.ndarray:
        """Send ``items`` in requests of the model's max batch (INT8: one item each), concurrently; the first
        failure in input order is raised, with item numbers counted over ``items``."""
        per_item = self.precision in PER_ITEM
        size = 1 if per_item else self._max_batch.get(model, 1)
        in_flight = asyncio.Semaphore(_INT8_CONCURRENCY if per_item else max(1, len(items)))

        async def part(start: int) -> np.ndarray:
            async with in_flight:
                try:
                    # Building a request may tokenise (tensors mode): in a thread, off the event loop.
                    inputs = await asyncio.to_thread(build, items[start : start + size])
                    return await self._infer(model, version, inputs, output)
                except InvalidInput as exc:
                    if not start:
                        raise
                    raise _shift_items(exc, start) from exc

        results = await asyncio.gather(*(part(s) for s in range(0, len(items), size)), return_exceptions=True)
        parts = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            parts.append(result)
        return np.concatenate(parts, axis=0).astype(np.float32, copy=False)

    async def _with_fallback(
        self, modality: Modality, items: Sequence[Any], tower: TextTower = TextTower.CLIP
    ) -> np.ndarray:
        if self.using_fallback:
            assert self._fallback is not None
            return await (
                self._fallback.encode_texts(items, tower)
                if modality is Modality.TEXT
                else self._fallback.encode_images(items)
            )
        try:
            await self._ensure_checked()
            return await (self._texts(list(items), tower) if modality is Modality.TEXT else self._images(list(items)))
        except EncoderUnavailable:
            self._verified = False
            if not self._cfg.fallback:
                raise
            fallback = await self._switch_to_fallback("during a request")
            return await (
                fallback.encode_texts(items, tower) if modality is Modality.TEXT else fallback.encode_images(items)
            )

    async def encode_texts(self, texts: Sequence[str], tower: TextTower = TextTower.CLIP) -> np.ndarray:
        for i, text in enumerate(texts):
            check_text(text, self._limits, name=f"text {i}")
        if tower == TextTower.MULTILINGUAL and self._ml is None:
            raise ModelError("this encoder has no multilingual text tower (export --text-model)")
        if not texts:
            return np.zeros((0, self._info.dim), np.float32)
        return await self._with_fallback(Modality.TEXT, texts, tower)

    async def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._info.dim), np.float32)
        return await self._with_fallback(Modality.IMAGE, images)

    async def _texts(self, texts: list[str], tower: TextTower = TextTower.CLIP) -> np.ndarray:
        def strings(chunk: list[str]) -> list[tuple[str, np.ndarray, str]]:
            return [("text", np.array([[t.encode()] for t in chunk], dtype=object), "BYTES")]

        def token_ids(tokenizer: TextTokenizer) -> Callable[[list[str]], list[tuple[str, np.ndarray, str]]]:
            def build(chunk: list[str]) -> list[tuple[str, np.ndarray, str]]:
                batch = tokenizer(chunk)
                return [(TEXT_INPUTS[0], batch.input_ids, "INT64"), (TEXT_INPUTS[1], batch.attention_mask, "INT64")]

            return build

        if tower == TextTower.MULTILINGUAL:
            assert self._ml is not None
            if self._ml_strings is not None:
                return await self._chunked(self._ml_strings, "", texts, strings, TEXT_OUTPUT)
            ml_name, ml_version, ml_tokenizer = self._ml
            return await self._chunked(ml_name, ml_version, texts, token_ids(ml_tokenizer), TEXT_OUTPUT)
        if self._cfg.send == "bytes":
            return await self._chunked(self._ensembles[Modality.TEXT], "", texts, strings, TEXT_OUTPUT)
        name, version = self._models[Modality.TEXT]
        return await self._chunked(name, version, texts, token_ids(self._tokenizer), TEXT_OUTPUT)

    async def _images(self, images: list[bytes]) -> np.ndarray:
        if self._cfg.send == "bytes":
            # Refuse what the server would refuse before shipping it (clear error, no wasted upload).
            for i, data in enumerate(images):
                if not data:
                    raise InvalidInput(f"image {i}: empty file")
                if len(data) > self._limits.max_image_bytes:
                    raise InvalidInput(
                        f"image {i}: {len(data)} bytes is over the limit of {self._limits.max_image_bytes}"
                    )

            def build(chunk: list[bytes]) -> list[tuple[str, np.ndarray, str]]:
                return [("image_bytes", np.array([[b] for b in chunk], dtype=object), "BYTES")]

            return await self._chunked(self._ensembles[Modality.IMAGE], "", images, build, IMAGE_OUTPUT)

        spec = self.manifest.image
        tensors = await asyncio.to_thread(
            lambda: [load_image_tensor(d, spec, self._limits, name=f"image {i}") for i, d in enumerate(images)]
        )

        def build_pixels(chunk: list[np.ndarray]) -> list[tuple[str, np.ndarray, str]]:
            return [(IMAGE_INPUT, np.stack(chunk), "FP32")]

        name, version = self._models[Modality.IMAGE]
        return await self._chunked(name, version, tensors, build_pixels, IMAGE_OUTPUT)

    async def aclose(self) -> None:
        await self._client.close()
        if self._fallback is not None:
            await self._fallback.aclose()
