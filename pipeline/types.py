"""Small shared enums: kept apart so every layer can import them without pulling anything heavy."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @property
    def triton_version(self) -> int:
        """The precision's place in the export order (1, 2, 3). Where Triton serves a variant (its model and version
        folder) is the manifest's ``triton_model`` / ``triton_version``: INT8 is version 1 of a model of its own."""
        return _VERSIONS[self]


_VERSIONS = {Precision.FP32: 1, Precision.FP16: 2, Precision.INT8: 3}
