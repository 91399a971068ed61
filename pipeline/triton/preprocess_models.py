"""Triton python-backend models that run the client's own preprocessing on the server.

``preprocess_image``: encoded image bytes (TYPE_STRING) → ``pixel_values``; ``tokenize_text``: UTF-8 strings →
``input_ids`` / ``attention_mask``. Both import ``pipeline.preprocess``, so there is one preprocessing path. A
bad input fails only its own request (a TritonError in that response); the server stays up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import Manifest
from pipeline.preprocess import TextTokenizer, check_text, load_image_tensor


def _manifest(args: dict[str, Any]) -> tuple[Manifest, Path]:
    repository = Path(args["model_repository"]).parent
    return Manifest.model_validate(json.loads((repository / "manifest.json").read_text())), repository


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
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
            continue
        tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
    return responses


class PreprocessImage:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, _ = _manifest(args)
        self.limits = LimitsSettings()

    def _pixels(self, items: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.manifest.image
        pixels = [load_image_tensor(_as_bytes(v), spec, self.limits, name=f"image {i}") for i, v in enumerate(items)]
        return {"pixel_values": np.stack(pixels)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(requests, "image_bytes", self._pixels)


class TokenizeText:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, repository = _manifest(args)
        self.tokenizer = TextTokenizer(repository / self.manifest.text.tokenizer_file, self.manifest.text)
        self.limits = LimitsSettings()

    def _tokens(self, items: np.ndarray) -> dict[str, np.ndarray]:
        texts = [check_text(_as_bytes(v).decode("utf-8"), self.limits, name=f"text {i}") for i, v in enumerate(items)]
        batch = self.tokenizer(texts)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    def execute(self, requests: list[Any]) -> list[Any]:
        return _respond(requests, "text", self._tokens)
