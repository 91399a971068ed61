"""The Encoder protocol every backend implements (in-process onnxruntime, Triton over gRPC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.manifest import Manifest
from pipeline.types import Precision


@dataclass(frozen=True)
class EncoderInfo:
    model: str  # the manifest's short name: source@fingerprint
    fingerprint: str
    precision: Precision
    dim: int
    backend: str  # "onnxruntime" or "triton"

    @classmethod
    def of(cls, manifest: Manifest, precision: Precision, backend: str) -> EncoderInfo:
        return cls(manifest.name, manifest.fingerprint, precision, manifest.dim, backend)


@runtime_checkable
class Encoder(Protocol):
    """Async text and image encoding; vectors are float32 ``[N, dim]``, unit length, in input order."""

    @property
    def info(self) -> EncoderInfo: ...

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raises InvalidInput (naming the text) for empty or over-long texts."""
        ...

    async def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded image files (JPEG, PNG, WebP, ...). Raises InvalidInput naming the first bad image."""
        ...

    async def aclose(self) -> None: ...
