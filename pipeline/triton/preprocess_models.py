"""Triton python-backend models that run the client's own preprocessing on the server.

``preprocess_image``: encoded image bytes (TYPE_STRING) → ``pixel_values``; ``tokenize_text``: UTF-8 strings →
``input_ids`` / ``attention_mask``; ``tokenize_text_multilingual``: the same with the multilingual tower's
tokenizer. Both import ``pipeline.preprocess``, so there is one preprocessing path. A
bad input fails only its own request (an INVALID_ARG TritonError in that response, which the client reports as
InvalidInput); the server stays up. The input limits come from ``PIPELINE__LIMITS__*`` in the server's
environment (or a ``.env`` in its working directory), read the way the service reads them, so the same variables
set on both give the same guards on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import Manifest, TextSpec
from pipeline.preprocess import TextTokenizer, check_text, load_image_tensor


def model_root(args: dict[str, Any]) -> Path:
    """Where the manifest and the tokenizer are: the model's own folder when they came with it (a version
    loaded through the model-control API, see ``pipeline.triton.control``), else the repository above it."""
    folder = Path(args["model_repository"])
    return folder if (folder / "manifest.json").is_file() else folder.parent


def _manifest(args: dict[str, Any]) -> tuple[Manifest, Path]:
    repository = model_root(args)
    return Manifest.model_validate(json.loads((repository / "manifest.json").read_text())), repository


class _LimitsFromEnv(BaseSettings):
    """Only the ``limits`` section of the service's settings: the server needs no other setting (and must not
    fail on one, e.g. production checks of secrets it does not hold)."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE__", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )
    limits: LimitsSettings = LimitsSettings()


def server_limits() -> LimitsSettings:
    """The input limits from ``PIPELINE__LIMITS__*`` (environment, then ``.env``), defaults for the rest."""
    return _LimitsFromEnv().limits


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


def _respond(requests: list[Any], input_name: str, convert: Callable[[np.ndarray], dict[str, np.ndarray]]) -> list[Any]:
    """One response per request: ``convert`` its input's items into named outputs, or, when they are bad input,
    an error for that request alone (the others in the batch are answered)."""
    import triton_python_backend_utils as pb_utils

    responses = []
    for request in requests:
        items = pb_utils.get_input_tensor_by_name(request, input_name).as_numpy().reshape(-1)
        try:
            outputs = convert(items)
        except (InvalidInput, UnicodeDecodeError) as exc:
            # INVALID_ARG (INVALID_ARGUMENT on the wire): the client's error for the caller's input. The default
            # code, INTERNAL, reads as a server fault and would send a bad image to the fallback.
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            continue
        tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
    return responses


class PreprocessImage:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, _ = _manifest(args)
        self.limits = server_limits()

    def _pixels(self, items: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.manifest.image
        pixels = [load_image_tensor(_as_bytes(v), spec, self.limits, name=f"image {i}") for i, v in enumerate(items)]
        return {"pixel_values": np.stack(pixels)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(requests, "image_bytes", self._pixels)


class TokenizeText:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, repository = _manifest(args)
        spec = self._spec()
        self.tokenizer = TextTokenizer(repository / spec.tokenizer_file, spec)
        self.limits = server_limits()

    def _spec(self) -> TextSpec:
        return self.manifest.text

    def _tokens(self, items: np.ndarray) -> dict[str, np.ndarray]:
        texts = [check_text(_as_bytes(v).decode("utf-8"), self.limits, name=f"text {i}") for i, v in enumerate(items)]
        batch = self.tokenizer(texts)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(requests, "text", self._tokens)


class TokenizeMultilingual(TokenizeText):
    def _spec(self) -> TextSpec:
        if self.manifest.multilingual is None:
            raise ValueError("the manifest beside this model has no multilingual text tower; re-export")
        return self.manifest.multilingual.text
