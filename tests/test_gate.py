"""The export's INT8 accuracy gate: a healthy variant passes with its figures recorded; a damaged one
(wrong weight scales) is refused, and encoders will not serve it unless forced."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import EncoderSettings
from pipeline.encoders.onnx import OnnxEncoder
from pipeline.errors import ModelError
from pipeline.export.repository import export_repository
from pipeline.manifest import load_manifest
from pipeline.types import Modality, Precision
from tests.conftest import run_cli


def _scramble_weight_scales(path) -> int:
    """Multiply every per-channel weight scale by a random factor in [0.2, 5]: a classic quantiser bug."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    damaged = 0
    for init in model.graph.initializer:
        per_channel = len(init.dims) == 1 and init.dims[0] > 1
        if init.name.endswith("_scale") and init.data_type == onnx.TensorProto.FLOAT and per_channel:
            values = numpy_helper.to_array(init) * rng.uniform(0.2, 5.0, size=tuple(init.dims))
            init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))
            damaged += 1
    onnx.save(model, str(path))
    return damaged


def test_healthy_int8_passes_with_figures(model_repository):
    manifest = load_manifest(model_repository)
    quality = manifest.models[Modality.IMAGE].variants[Precision.INT8].quality
    assert quality is not None and quality.servable and quality.reasons == []
    assert quality.figures["top10_overlap"] >= 0.8 and quality.figures["image_cosine_mean"] >= 0.95
    assert quality.calibration.startswith("generated")
    assert manifest.models[Modality.TEXT].variants[Precision.FP32].quality is None  # the reference is not gated


def test_damaged_int8_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from pipeline.export import quantize

    original, counts = quantize.to_int8, []

    def damaged_to_int8(src, dst, signed_weights=True):  # both kernels' files damaged alike
        original(src, dst, signed_weights)
        counts.append(_scramble_weight_scales(dst))

    monkeypatch.setattr(quantize, "to_int8", damaged_to_int8)
    repo = tmp_path / "repo"
    logs: list[str] = []
    manifest = export_repository(str(tiny_checkpoint), repo, [Precision.FP32, Precision.INT8], log=logs.append)
    assert counts and all(c > 0 for c in counts)
    quality = manifest.models[Modality.IMAGE].variants[Precision.INT8].quality
    assert quality is not None and not quality.servable and quality.reasons
    assert any("int8: NOT servable" in line for line in logs)
    assert load_manifest(repo).servable(Precision.INT8) is not None  # the verdict is in the manifest on disk

    with pytest.raises(ModelError, match="failed the export's accuracy gate"):
        OnnxEncoder.load(repo, precision=Precision.INT8)
    default = OnnxEncoder.load(repo)  # the CPU default (INT8) steps aside for FP32
    forced = OnnxEncoder.load(repo, EncoderSettings(force_precision=True), precision=Precision.INT8)
    assert default.info.precision is Precision.FP32 and forced.info.precision is Precision.INT8
    proc = run_cli("embed", "--model-repository", str(repo), "--precision", "int8", "--text", "x", check=False)
    assert proc.returncode == 1 and "accuracy gate" in proc.stderr


def test_thresholds_are_configurable(tiny_checkpoint, tmp_path):
    strict = export_repository(str(tiny_checkpoint), tmp_path / "strict", [Precision.FP32, Precision.INT8],
                               min_cosine=0.99999, min_overlap=1.0)  # fmt: skip
    quality = strict.models[Modality.TEXT].variants[Precision.INT8].quality
    assert quality is not None and not quality.servable and quality.min_cosine == 0.99999
