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


def to_int8(src: Path, dst: Path) -> None:
    """Dynamic INT8 quantisation with per-channel weight scales; activations are quantised at run time.

    Weights are unsigned (U8U8), not onnxruntime's default signed (U8S8): on x86 CPUs without VNNI (AVX2 only,
    e.g. AMD EPYC before Zen 4) the U8S8 kernel multiplies with ``vpmaddubsw``, whose 16-bit intermediate sums
    saturate. Measured on such a CPU with the tests' tiny CLIP: image cosine to FP32 0.62 with U8S8 (the gate
    refuses it), 0.95 with 7-bit weights (``reduce_range``), 0.98 with U8U8; text 0.95 / 0.999 / 0.999."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference does not understand the dynamo exporter's graphs; ONNX's own inference does.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=QuantType.QUInt8)


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
