"""FP32 ONNX → FP16 (for GPUs) and INT8 (dynamic, per-channel weights; for CPUs)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def to_fp16(src: Path, dst: Path) -> None:
    """Convert weights and activations to FP16, keeping FP32 inputs and outputs (the tensor contract)."""
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path, signed_weights: bool = True) -> None:
    """Dynamic INT8 quantisation with per-channel weight scales; activations are quantised at run time.

    ``signed_weights``: onnxruntime's default (U8S8), exact and fastest on CPUs with VNNI and on Arm. Unsigned
    (U8U8) is for x86 CPUs without VNNI, where the U8S8 kernel saturates (see
    :func:`pipeline.manifest.cpu_needs_unsigned_int8`); export writes both and the encoder picks at load time.
    Measured on the tests' tiny CLIP on an AVX2-only CPU, cosine to FP32 image / text: U8S8 0.62 / 0.95,
    7-bit weights (``reduce_range``) 0.947 / 0.999, U8U8 0.98 / 0.999."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference does not understand the dynamo exporter's graphs; ONNX's own inference does.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        weights = QuantType.QInt8 if signed_weights else QuantType.QUInt8
        quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=weights)


def to_int8_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static INT8 in QDQ format: weights per channel, activation ranges calibrated on ``feeds`` (MinMax).

    Only MatMul, Gemm and Conv are quantised: norms and softmax stay in float, where INT8 costs accuracy for
    no speed.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        )  # fmt: skip
