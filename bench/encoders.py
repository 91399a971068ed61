"""Encoder latency and throughput: PyTorch eager (the baseline) vs ONNX FP32 / FP16 / INT8, in one run.

ViT-B/32 shapes with random weights from the config (latency does not depend on the weights), so it runs
offline. Model-call latency only: preprocessing is the same code for every row and is timed separately.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import CACHE, median_ms, show

SHORT = "red striped mug"  # a typical query: 3 words
FULL = "word " * 200  # truncated to the full 77 tokens


def ensure_vit_b32() -> Path:
    """Build and export the ViT-B/32-shaped model once (cached under bench/.cache)."""
    from pipeline.export.repository import export_repository
    from pipeline.export.tiny import build_tiny_clip, vit_b32_overrides

    checkpoint, repo = CACHE / "vit-b32-random", CACHE / "vit-b32-repo"
    if not (checkpoint / "model.safetensors").exists():
        build_tiny_clip(checkpoint, seed=0, **vit_b32_overrides())
    export_repository(str(checkpoint), repo, log=lambda m: print(m, file=sys.stderr))
    return repo


def _rss_mb(code: str) -> float:
    """Peak RSS (MB) of a fresh Python process running ``code`` (which must print nothing else).

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (this big process).
    """
    wrapped = code + (
        "\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def run(repeat_small: int = 20, repeat_large: int = 5, threads: int = 0) -> None:
    import onnxruntime as ort
    import torch
    from transformers import CLIPModel

    from pipeline.manifest import load_manifest
    from pipeline.preprocess import TextTokenizer, load_image_tensor
    from pipeline.types import Modality, Precision

    repo = ensure_vit_b32()
    manifest = load_manifest(repo)
    tok = TextTokenizer(repo / manifest.text.tokenizer_file, manifest.text)
    short, full = tok([SHORT]), tok([FULL])
    short16, full16 = tok([SHORT] * 16), tok([FULL] * 16)
    pixels = {b: np.random.default_rng(0).normal(size=(b, 3, 224, 224)).astype(np.float32) for b in (1, 16)}

    def row(name, image, text):
        i1 = median_ms(lambda: image(pixels[1]), repeat_small)
        i16 = median_ms(lambda: image(pixels[16]), repeat_large)
        ts = median_ms(lambda: text(short), repeat_small)
        tf = median_ms(lambda: text(full), repeat_small)
        ts16 = median_ms(lambda: text(short16), repeat_large)
        tf16 = median_ms(lambda: text(full16), repeat_large)
        return [name, i1, i16, 16000 / i16, ts, tf, ts16, tf16, 16000 / ts16]

    torch.set_num_threads(torch.get_num_threads() if threads == 0 else threads)
    model = CLIPModel.from_pretrained(repo.parent / "vit-b32-random").eval()

    def torch_image(x):
        with torch.inference_mode():
            return model.get_image_features(pixel_values=torch.from_numpy(x)).pooler_output

    def torch_text(b):
        with torch.inference_mode():
            return model.get_text_features(
                input_ids=torch.from_numpy(b.input_ids), attention_mask=torch.from_numpy(b.attention_mask)
            ).pooler_output

    rows = [row("PyTorch eager FP32 (baseline)", torch_image, torch_text)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for precision in Precision:
        vis = ort.InferenceSession(str(repo / manifest.variant(Modality.IMAGE, precision).file), options)
        txt = ort.InferenceSession(str(repo / manifest.variant(Modality.TEXT, precision).file), options)
        rows.append(
            row(
                f"ONNX Runtime {precision.upper()}",
                lambda x, s=vis: s.run(None, {"pixel_values": x}),
                lambda b, s=txt: s.run(None, {"input_ids": b.input_ids, "attention_mask": b.attention_mask}),
            )
        )
    base = rows[0]
    table = []
    for r in rows:
        ratio = f"{base[1] / r[1]:.1f}x / {base[4] / r[4]:.1f}x"
        table.append(
            [r[0], *(f"{v:.1f}" for v in r[1:3]), f"{r[3]:.0f}", *(f"{v:.1f}" for v in r[4:8]), f"{r[8]:.0f}", ratio]
        )
    sizes = {
        p: manifest.variant(Modality.IMAGE, p).size_bytes + manifest.variant(Modality.TEXT, p).size_bytes
        for p in Precision
    }
    jpeg = _sample_jpeg()
    prep = median_ms(lambda: load_image_tensor(jpeg, manifest.image, _limits()), repeat_small)
    rss_onnx = _rss_mb(
        "import asyncio\nfrom pipeline.encoders.onnx import OnnxEncoder\n"
        f"e = OnnxEncoder.load({str(repo)!r})\n"
        "asyncio.run(e.encode_texts(['red mug']))"
    )
    rss_torch = _rss_mb(
        "import torch\nfrom transformers import CLIPModel\n"
        f"m = CLIPModel.from_pretrained({str(repo.parent / 'vit-b32-random')!r}).eval()\n"
        "m.get_text_features(input_ids=torch.tensor([[0, 5, 1]]))"
    )
    notes = (
        "Model files (text + vision): "
        + ", ".join(f"{p.upper()} {sizes[p] / 1e6:.0f} MB" for p in Precision)
        + f". Image preprocessing (640x480 JPEG decode → tensor): {prep:.1f} ms.\n"
        + f"Serving process peak RSS: onnxruntime INT8, no torch imported: {rss_onnx:.0f} MB; "
        f"PyTorch eager: {rss_torch:.0f} MB.\n"
        + "Short text = 3 words (6 tokens incl. bos/eos), padded to the batch's longest; full = 77 tokens. "
        "Speed-up = baseline median / this median (image b1 / short text b1). FP16 halves the files but gains "
        "nothing on CPU: it is the GPU variant."
    )
    show(
        "Encoders, ViT-B/32 shapes, median ms per call",
        [
            "backend",
            "image b1",
            "image b16",
            "img/s b16",
            "text b1 short",
            "text b1 full",
            "text b16 short",
            "text b16 full",
            "texts/s b16 short",
            "speed-up vs eager",
        ],
        table,
        "encoders",
        notes,
    )
    print(json.dumps({"rows": rows}, default=float), file=sys.stderr)


def _limits():
    from pipeline.config import LimitsSettings

    return LimitsSettings()


def _sample_jpeg() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()
