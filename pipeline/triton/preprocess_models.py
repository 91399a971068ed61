"""Triton python-backend models that run the client's own preprocessing on the server.

``preprocess_image``: encoded image bytes (TYPE_STRING) → ``pixel_values``; ``tokenize_text``: UTF-8 strings →
``input_ids`` / ``attention_mask``. Both import ``pipeline.preprocess``, so there is one preprocessing path. A
bad input fails only its own request (a TritonError in that response); the server stays up.
"""

from __future__ import annotations

import json
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


class PreprocessImage:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, _ = _manifest(args)
        self.limits = LimitsSettings()

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
            try:
                pixels = np.stack(
                    [
                        load_image_tensor(_as_bytes(v), self.manifest.image, self.limits, name=f"image {i}")
                        for i, v in enumerate(items)
                    ]
                )
            except InvalidInput as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pixel_values", pixels)]))
        return responses


class TokenizeText:
    def initialize(self, args: dict[str, Any]) -> None:
        self.manifest, repository = _manifest(args)
        self.tokenizer = TextTokenizer(repository / self.manifest.text.tokenizer_file, self.manifest.text)
        self.limits = LimitsSettings()

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            try:
                texts = [
                    check_text(_as_bytes(v).decode("utf-8"), self.limits, name=f"text {i}") for i, v in enumerate(items)
                ]
            except (InvalidInput, UnicodeDecodeError) as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            batch = self.tokenizer(texts)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", batch.input_ids),
                        pb_utils.Tensor("attention_mask", batch.attention_mask),
                    ]
                )
            )
        return responses
