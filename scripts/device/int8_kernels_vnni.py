"""Device check (run on a lent machine, not in CI): dynamic INT8 with signed (U8S8) vs unsigned (U8U8) weights on
a CPU with VNNI, ViT-B/32 shapes with random weights, self-contained (torch + transformers + onnxruntime only).
Prints the CPU flags, per-row latency and centred cosine to FP32 for both, as bench/int8_kernels.py does here."""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
flags = next(line for line in cpuinfo if line.startswith("flags")).split()
model_name = next(line for line in cpuinfo if line.startswith("model name")).split(":", 1)[1].strip()
print("cpu:", model_name, "|", [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags])
print("onnxruntime", ort.__version__, "torch", torch.__version__, "threads", threads)
torch.manual_seed(0)
config = CLIPVisionConfig(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    projection_dim=512,
)
model = CLIPVisionModelWithProjection(config).eval()


class Visual(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        e = self.m(pixel_values=pixel_values).image_embeds
        return e / e.norm(dim=-1, keepdim=True)


tmp = Path(tempfile.mkdtemp())
fp32 = tmp / "visual.onnx"
torch.onnx.export(
    Visual(model),
    (torch.randn(1, 3, 224, 224),),
    str(fp32),
    input_names=["pixel_values"],
    output_names=["image_embeds"],
    dynamic_axes={"pixel_values": {0: "b"}},
    dynamo=False,
)
rng = np.random.default_rng(0)
feeds = [{"pixel_values": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(16)]
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads


def session(path):
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def centred(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def p50(s, repeat=30):
    for _ in range(3):
        s.run(None, feeds[0])
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        s.run(None, feeds[0])
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


ref = session(fp32)
want = np.concatenate([ref.run(None, f)[0] for f in feeds])
print(f"fp32: {p50(ref):.1f} ms")
base = None
for label, wt in (("U8S8", QuantType.QInt8), ("U8U8", QuantType.QUInt8)):
    out = tmp / f"{label}.onnx"
    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=wt)
    s = session(out)
    got = np.concatenate([s.run(None, f)[0] for f in feeds])
    ms = p50(s)
    base = base or ms
    print(f"{label}: {ms:.1f} ms ({base / ms:.2f}x of U8S8's speed), centred cosine to FP32 {centred(got, want):.4f}")
