"""The Encoder protocol every backend implements (in-process onnxruntime, Triton over gRPC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.manifest import Manifest
from pipeline.text_towers import TextTower
from pipeline.types import Precision


@dataclass(frozen=True)
class EncoderInfo:
    model: str  # the manifest's short name: source@fingerprint
    fingerprint: str
    precision: Precision
    dim: int
    backend: str  # "onnxruntime" or "triton"
    # The multilingual text tower's fingerprint when this encoder serves one (its query vectors are its own).
    multilingual: str | None = None
    # The tower that embeds product titles: "clip", or the multilingual tower's fingerprint (a catalog in another
    # language: PIPELINE__ENCODER__CATALOG_LANGUAGE). Part of the vector collection's stamp.
    titles: str = TextTower.CLIP.value

    @classmethod
    def of(cls, manifest: Manifest, precision: Precision, backend: str, multilingual: bool = False,
           titles: TextTower = TextTower.CLIP) -> EncoderInfo:  # fmt: skip
        second = manifest.multilingual.fingerprint if multilingual and manifest.multilingual else None
        by = second if titles is TextTower.MULTILINGUAL and second else TextTower.CLIP.value
        return cls(manifest.name, manifest.fingerprint, precision, manifest.dim, backend, second, by)

    @property
    def title_tower(self) -> TextTower:
        return TextTower.CLIP if self.titles == TextTower.CLIP.value else TextTower.MULTILINGUAL


@runtime_checkable
class Encoder(Protocol):
    """Async text and image encoding; vectors are float32 ``[N, dim]``, unit length, in input order."""

    @property
    def info(self) -> EncoderInfo: ...

    async def encode_texts(self, texts: Sequence[str], tower: TextTower = TextTower.CLIP) -> np.ndarray:
        """Raises InvalidInput (naming the text) for empty or over-long texts. ``tower``: CLIP's text tower or
        the multilingual one (when ``info.multilingual``; ModelError otherwise)."""
        ...

    def tower_for(self, text: str) -> TextTower:
        """The text tower that embeds ``text`` as a query (``PIPELINE__ENCODER__TEXT_TOWER``)."""
        ...

    async def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded image files (JPEG, PNG, WebP, ...). Raises InvalidInput naming the first bad image."""
        ...

    async def aclose(self) -> None: ...


async def encode_queries(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """``texts`` embedded as queries, each by the tower ``encoder.tower_for`` picks (one call per tower), in
    input order."""
    towers = [encoder.tower_for(text) for text in texts]
    if len(set(towers)) <= 1:
        return await encoder.encode_texts(texts, towers[0] if towers else TextTower.CLIP)
    out = np.zeros((len(texts), encoder.info.dim), np.float32)
    for tower in set(towers):
        rows = [i for i, t in enumerate(towers) if t == tower]
        out[rows] = await encoder.encode_texts([texts[i] for i in rows], tower)
    return out
