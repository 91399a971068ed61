"""``python -m bench int8-kernels``: dynamic INT8 with signed weights (U8S8, onnxruntime's default) against
unsigned weights (U8U8, what ``export`` writes), on ViT-B/32 shapes, in one run: the one thing that differs
is the weights' type. Per-row latency (one input per call, as the service runs INT8) and the centred cosine
to FP32 on the same inputs.

Why it matters: on x86 CPUs without VNNI (AVX2 only) the U8S8 kernel multiplies with ``vpmaddubsw``, whose
16-bit intermediate sums saturate; U8U8 takes another path. On a VNNI CPU both are exact enough and U8S8 is the
faster. Random weights (as every encoder benchmark here): the cosine figures show the kernel's error, not a
trained model's accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.common import median_ms, show
from bench.encoders import ensure_vit_b32


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def run(repeat: int = 20) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    repo = ensure_vit_b32()
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((16, 3, 224, 224)).astype(np.float32)
    ids = rng.integers(3, 1000, (16, 12)).astype(np.int64)
    feeds = {"image": [{"pixel_values": pixels[i : i + 1]} for i in range(16)],
             "text": [{"input_ids": ids[i : i + 1], "attention_mask": np.ones_like(ids[i : i + 1])}
                      for i in range(16)]}  # fmt: skip
    files = {"image": repo / "clip_visual" / "1" / "model.onnx", "text": repo / "clip_text" / "1" / "model.onnx"}
    options = ort.SessionOptions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tower, fp32 in files.items():
            prepared = Path(tmp) / f"{tower}-prepared.onnx"
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            reference = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
            want = np.concatenate([reference.run(None, f)[0] for f in feeds[tower]])
            timings = {}
            for label, weights in (("U8S8 (signed weights)", QuantType.QInt8),
                                   ("U8U8 (unsigned weights: the no-VNNI file)", QuantType.QUInt8)):  # fmt: skip
                out = Path(tmp) / f"{tower}-{weights.name}.onnx"
                quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=weights)
                session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
                got = np.concatenate([session.run(None, f)[0] for f in feeds[tower]])
                ms = median_ms(lambda s=session, f=feeds[tower][0]: s.run(None, f), repeat)
                timings[label] = ms
                ratio = "" if len(timings) == 1 else f"{next(iter(timings.values())) / ms:.2f}x"
                rows.append([tower, label, f"{ms:.1f}", ratio, f"{_centred_cosine(got, want):.4f}"])
    show(
        "Dynamic INT8 kernels, ViT-B/32 shapes, batch 1 (per-row), ms p50",
        ["tower", "weights", "ms", "speed vs U8S8", "centred cosine to FP32"],
        rows,
        "int8_kernels",
        f"CPU flags: {_cpu_flags()}. Ratio > 1: U8U8 faster. Random weights, 16 random inputs per tower.",
    )
