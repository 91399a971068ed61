"""One settings class for the whole stack.

Environment variables use the prefix ``PIPELINE__`` and ``__`` between sections, e.g.
``PIPELINE__ENCODER__PRECISION=fp16`` or ``PIPELINE__LIMITS__MAX_IMAGE_PIXELS=50000000``; a ``.env`` file in the
working directory is read too. Build it once at start-up (``Settings()``) and pass it down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.types import Precision


class EncoderSettings(BaseModel):
    model_repository: Path = Path("model_repository")
    # None: the best exported variant for the backend (int8 in-process on CPU, fp16 on a GPU server).
    precision: Precision | None = None
    # onnxruntime threads inside one inference; 0 lets onnxruntime use every core.
    intra_op_threads: int = Field(default=0, ge=0)
    # Largest batch sent to the model at once; bigger requests are split.
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    # How long the micro-batcher waits for more concurrent requests before running a batch.
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    # onnxruntime execution providers in order of preference; unavailable ones are skipped.
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class LimitsSettings(BaseModel):
    """Guards on user input, checked before any expensive work."""

    # Decompression-bomb guard: width * height of a decoded image.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    # A 10000x10 strip would be resized to 224000x224 before the crop: refuse such shapes up front.
    max_aspect_ratio: float = Field(default=20.0, ge=1.0)
    # Longer texts are refused; anything under this is tokenised and truncated to the model's 77 tokens.
    max_text_chars: int = Field(default=20_000, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PIPELINE__",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    encoder: EncoderSettings = EncoderSettings()
    limits: LimitsSettings = LimitsSettings()
