"""Pick and build the encoder from settings: Triton when a server URL is set, onnxruntime in-process otherwise."""

from __future__ import annotations

import asyncio

from pipeline.config import Settings
from pipeline.encoders.base import Encoder
from pipeline.types import Precision


async def create_encoder(
    settings: Settings, precision: Precision | None = None, triton_tag: str | None = None
) -> Encoder:
    """Open the configured encoder: Triton when ``triton.url`` is set (``triton_tag``: the model version's
    suffix on the server, None for the base version), else onnxruntime in a thread."""
    if settings.triton.url:
        from pipeline.encoders.triton import TritonEncoder

        return await TritonEncoder.connect(settings, precision, triton_tag)
    from pipeline.encoders.onnx import OnnxEncoder

    return await asyncio.to_thread(
        OnnxEncoder.load,
        settings.encoder.model_repository,
        settings.encoder,
        settings.limits,
        precision,
    )
