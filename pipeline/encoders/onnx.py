"""In-process encoder: onnxruntime sessions on the exported graphs, no torch, no transformers.

Preprocessing (decode, tokenise) runs per request in a thread pool, so a bad input fails only its caller;
model calls go through a micro-batcher per tower on ``INFER_WORKERS`` inference threads (up to that many calls at
once, the cores divided among them; onnxruntime parallelises inside a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import EncoderSettings, LimitsSettings
from pipeline.encoders.base import EncoderInfo
from pipeline.encoders.batching import MicroBatcher
from pipeline.errors import ModelError, ModelMismatch
from pipeline.manifest import PER_ITEM, Manifest, file_for_this_cpu, load_manifest, verify_model_file
from pipeline.preprocess import TextTokenizer, check_text, load_image_tensor
from pipeline.text_towers import TextTower, TowerPicker
from pipeline.types import Modality, Precision


def available_providers(wanted: Sequence[str]) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in wanted if p in have] or ["CPUExecutionProvider"]


def default_precision(manifest: Manifest, on_gpu: bool) -> Precision:
    """FP16 on a GPU, INT8 on a CPU (measured fastest on each), else the best exported one; a variant the
    export's accuracy gate refused is passed over."""
    order = (
        (Precision.FP16, Precision.FP32, Precision.INT8) if on_gpu else (Precision.INT8, Precision.FP32, Precision.FP16)
    )
    have = [p for p in order if p in manifest.precisions()]
    return next((p for p in have if manifest.servable(p) is None), have[0] if have else order[0])


def _session(path: Path, settings: EncoderSettings, providers: list[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads_per_call()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Building a session parses the whole graph, copies its weights out and frees the parse: glibc keeps most of that
    freed memory mapped, 70 MB of RSS for the ViT-B/32 INT8 towers (measured: 346 -> 276 MB).
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no glibc (musl, macOS, Windows): nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def _check_contract(session: Any, manifest: Manifest, modality: Modality, path: Path) -> None:
    spec = manifest.models[modality]
    have = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if have != want:
        raise ModelMismatch(f"{path}: tensors {have} differ from the manifest's {want}; re-export the model")


class OnnxEncoder:
    """Encoder protocol on onnxruntime. Build with :meth:`load`; close with :meth:`aclose`."""

    def __init__(
        self,
        manifest: Manifest,
        repository: Path,
        precision: Precision,
        sessions: dict[Modality, Any],
        settings: EncoderSettings,
        limits: LimitsSettings,
        multilingual: tuple[Any, Precision] | None = None,
    ) -> None:
        self.manifest = manifest
        self._limits = limits
        self._sessions = sessions
        self._tokenizer = TextTokenizer(repository / manifest.text.tokenizer_file, manifest.text)
        backend = (
            "onnxruntime-gpu" if "CUDAExecutionProvider" in sessions[Modality.TEXT].get_providers() else ("onnxruntime")
        )
        self._pick = TowerPicker.of(settings, multilingual is not None)
        self._info = EncoderInfo.of(manifest, precision, backend, multilingual is not None, self._pick.titles)
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess")
        self._infer = ThreadPoolExecutor(max_workers=settings.infer_workers, thread_name_prefix="onnx")
        wait, calls = settings.batch_wait_ms / 1000, settings.infer_workers
        # Dynamic INT8 computes activation scales per model call: one input per call keeps vectors batch-independent,
        # and merging requests whose rows then run one by one would only make each wait for the others.
        self._per_row = precision is Precision.INT8
        merge = settings.cross_request_batching and not self._per_row
        self._texts = MicroBatcher(self._run_text, self._infer, settings.max_batch_size, wait, merge, calls)
        self._images = MicroBatcher(self._run_image, self._infer, settings.max_batch_size, wait, merge, calls)
        self._ml: tuple[Any, TextTokenizer, bool] | None = None  # session, tokenizer, one row per call
        self._ml_texts: MicroBatcher[list[int]] | None = None
        if multilingual is not None and manifest.multilingual is not None:
            session, ml_precision = multilingual
            spec = manifest.multilingual.text
            self._ml = (session, TextTokenizer(repository / spec.tokenizer_file, spec), ml_precision in PER_ITEM)
            ml_merge = settings.cross_request_batching and not self._ml[2]
            self._ml_texts = MicroBatcher(self._run_ml, self._infer, settings.max_batch_size, wait, ml_merge, calls)

    @classmethod
    def load(
        cls,
        repository: Path,
        settings: EncoderSettings | None = None,
        limits: LimitsSettings | None = None,
        precision: Precision | None = None,
    ) -> OnnxEncoder:
        """Open both towers of ``repository`` at ``precision`` (settings', else the default for the device).

        Raises ModelError when the repository or the precision is missing, ModelMismatch when a graph's
        tensors differ from the manifest.
        """
        settings = settings or EncoderSettings()
        repository = Path(repository)
        manifest = load_manifest(repository)
        providers = available_providers(settings.providers)
        precision = (
            precision or settings.precision or default_precision(manifest, on_gpu="CUDAExecutionProvider" in providers)
        )
        manifest.check_servable(precision, settings.force_precision)
        sessions = {}
        for modality in Modality:
            path = verify_model_file(repository, file_for_this_cpu(manifest.variant(modality, precision)))
            sessions[modality] = _session(path, settings, providers)
            _check_contract(sessions[modality], manifest, modality, path)
        multilingual = None
        variant = manifest.served_multilingual(precision, settings.text_tower, settings.force_precision)
        if variant is not None:
            path = verify_model_file(repository, file_for_this_cpu(variant))
            multilingual = (_session(path, settings, providers), variant.precision)
        release_freed_memory()
        return cls(manifest, repository, precision, sessions, settings, limits or LimitsSettings(), multilingual)

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def tower_for(self, text: str) -> TextTower:
        return self._pick(text)

    async def encode_texts(self, texts: Sequence[str], tower: TextTower = TextTower.CLIP) -> np.ndarray:
        for i, text in enumerate(texts):
            check_text(text, self._limits, name=f"text {i}")
        if not texts:
            return np.zeros((0, self._info.dim), np.float32)
        loop = asyncio.get_running_loop()
        if tower == TextTower.MULTILINGUAL:
            if self._ml is None or self._ml_texts is None:
                raise ModelError("this encoder has no multilingual text tower (export --text-model)")
            ids = await loop.run_in_executor(self._prep, self._ml[1].encode, list(texts))
            return await self._ml_texts.submit(ids)
        ids = await loop.run_in_executor(self._prep, self._tokenizer.encode, list(texts))
        return await self._texts.submit(ids)

    async def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._info.dim), np.float32)
        loop = asyncio.get_running_loop()
        tensors = await loop.run_in_executor(self._prep, self._preprocess_images, list(images))
        return await self._images.submit(tensors)

    def _preprocess_images(self, images: list[bytes]) -> list[np.ndarray]:
        spec = self.manifest.image
        return [load_image_tensor(data, spec, self._limits, name=f"image {i}") for i, data in enumerate(images)]

    def _run_text(self, ids: list[list[int]]) -> np.ndarray:
        if self._per_row and len(ids) > 1:
            return np.concatenate([self._run_text([row]) for row in ids])
        batch = self._tokenizer.pad(ids)
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        return self._sessions[Modality.TEXT].run(None, feeds)[0]

    def _run_ml(self, ids: list[list[int]]) -> np.ndarray:
        assert self._ml is not None
        session, tokenizer, per_row = self._ml
        if per_row and len(ids) > 1:
            return np.concatenate([self._run_ml([row]) for row in ids])
        batch = tokenizer.pad(ids)
        return session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]

    def _run_image(self, tensors: list[np.ndarray]) -> np.ndarray:
        if self._per_row and len(tensors) > 1:
            return np.concatenate([self._run_image([tensor]) for tensor in tensors])
        return self._sessions[Modality.IMAGE].run(None, {"pixel_values": np.stack(tensors)})[0]

    async def aclose(self) -> None:
        await self._texts.aclose()
        await self._images.aclose()
        if self._ml_texts is not None:
            await self._ml_texts.aclose()
        self._prep.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._infer.shutdown, wait=True)  # waits out a model call in flight

    async def __aenter__(self) -> OnnxEncoder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
