"""FP32 ONNX → FP16 (for GPUs) and INT8 (dynamic, per-channel weights; for CPUs)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def to_fp16(src: Path, dst: Path) -> None:
    """Convert weights and activations to FP16, keeping FP32 inputs and outputs (the tensor contract)."""
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path) -> None:
    """Dynamic INT8 quantisation with per-channel weight scales; activations are quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference does not understand the dynamo exporter's graphs; ONNX's own inference does.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=QuantType.QInt8)
