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
        """Each precision is one version of the Triton model (1, 2, 3), so one repository serves all three."""
        return _VERSIONS[self]


_VERSIONS = {Precision.FP32: 1, Precision.FP16: 2, Precision.INT8: 3}
