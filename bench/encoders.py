"""Encoder latency and throughput: PyTorch eager FP32 / INT8 vs ONNX Runtime FP32 / FP16 / INT8, in one run.

ViT-B/32 shapes with random weights from the config (latency does not depend on the weights), so it runs
offline. Model-call latency only: preprocessing is the same code for every row and is timed separately.
INT8 (dynamic quantisation, both runtimes) is timed batched and per-row (one input per call, the way the
service runs it so that a vector does not depend on its batch-mates); each ratio divides rows that differ in
one thing only: the runtime, the precision, or per-row vs batched.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class Row:
    """One backend's medians (ms). ``per_row``: a batch of 32 runs as 32 calls of one input each."""

    name: str
    runtime: str  # "torch" or "onnx"
    precision: str
    per_row: bool
    calls: dict[str, Callable[[], object]]  # column -> one timed call
    ms: dict[str, float] = field(default_factory=dict)


COLUMNS = ["image b1", "image b32", "text b1 short", "text b1 full", "text b32 short", "text b32 full"]


def _rows(name: str, runtime: str, precision: str, image: Any, text: Any, inputs: Any) -> list[Row]:
    """A backend's calls at batch 1 and 32 (batched: one call; INT8 also per-row: 32 calls of one input)."""
    pixels, short, full, short32, full32 = inputs
    rows = []
    for per_row in (False, True) if precision == "int8" else (False,):
        calls: dict[str, Callable[[], object]]
        if per_row:
            calls = {
                "image b32": lambda: [image(pixels[32][i : i + 1]) for i in range(32)],
                "text b32 short": lambda: [text(short) for _ in range(32)],
                "text b32 full": lambda: [text(full) for _ in range(32)],
            }
        else:
            calls = {
                "image b1": lambda: image(pixels[1]),
                "image b32": lambda: image(pixels[32]),
                "text b1 short": lambda: text(short),
                "text b1 full": lambda: text(full),
                "text b32 short": lambda: text(short32),
                "text b32 full": lambda: text(full32),
            }
        label = f"{name}, {'per-row: 32 calls of 1' if per_row else 'batched: b32 in one call'}"
        rows.append(Row(label if precision == "int8" else name, runtime, precision, per_row, calls))
    return rows


def _time_round_robin(rows: list[Row], repeat_small: int, repeat_large: int) -> None:
    """Median ms of every call of every row, timed in rounds: each round times every row in turn.

    On a shared machine the load drifts over minutes; spreading each row's timings over the whole run makes
    the rows of one table share that drift, so their ratios hold. In the first round every call runs twice
    untimed first; in the others a row's first call does (the previous runtime's threads wind down: torch and
    onnxruntime each spin theirs for a while after a call).
    """
    rounds = max(1, repeat_large)
    times: dict[tuple[int, str], list[float]] = {}
    for r in range(rounds):
        for i, row in enumerate(rows):
            if r > 0:
                next(iter(row.calls.values()))()
            for column, call in row.calls.items():
                timed = -(-repeat_small // rounds) if "b1" in column else 1
                for _ in range(2 if r == 0 else 0):
                    call()
                for _ in range(timed):
                    start = time.perf_counter()
                    call()
                    times.setdefault((i, column), []).append((time.perf_counter() - start) * 1000)
    for i, row in enumerate(rows):
        row.ms = {column: statistics.median(times[(i, column)]) for column in row.calls}


def _ratio(base: Row | None, row: Row) -> str:
    """base's median over row's (>1: row faster): image / short text, at b1 and b32 where both have them."""
    if base is None:
        return ""
    parts = []
    for b in ("b1", "b32"):
        keys = (f"image {b}", f"text {b} short")
        if all(k in base.ms and k in row.ms for k in keys):
            parts.append(f"{b} " + " / ".join(f"{base.ms[k] / row.ms[k]:.1f}x" for k in keys))
    return "; ".join(parts)


def run(repeat_small: int = 20, repeat_large: int = 5, threads: int = 0) -> None:
    import onnxruntime as ort
    import torch

    from bench.peer import eager_clip
    from pipeline.manifest import file_for_this_cpu, load_manifest
    from pipeline.preprocess import TextTokenizer, load_image_tensor
    from pipeline.types import Modality, Precision

    repo = ensure_vit_b32()
    checkpoint = repo.parent / "vit-b32-random"
    manifest = load_manifest(repo)
    tok = TextTokenizer(repo / manifest.text.tokenizer_file, manifest.text)
    pixels = {b: np.random.default_rng(0).normal(size=(b, 3, 224, 224)).astype(np.float32) for b in (1, 32)}
    inputs = (pixels, tok([SHORT]), tok([FULL]), tok([SHORT] * 32), tok([FULL] * 32))

    torch.set_num_threads(torch.get_num_threads() if threads == 0 else threads)
    rows: list[Row] = []
    for precision in ("fp32", "int8"):
        model = eager_clip(checkpoint, precision)

        def torch_image(x, m=model):
            with torch.inference_mode():
                return m.get_image_features(pixel_values=torch.from_numpy(x)).pooler_output

        def torch_text(b, m=model):
            with torch.inference_mode():
                return m.get_text_features(
                    input_ids=torch.from_numpy(b.input_ids), attention_mask=torch.from_numpy(b.attention_mask)
                ).pooler_output

        name = "PyTorch eager FP32" if precision == "fp32" else "PyTorch eager INT8 (quantize_dynamic)"
        rows += _rows(name, "torch", precision, torch_image, torch_text, inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for p in Precision:
        # The files the service's encoder loads on this CPU (INT8: the no-VNNI kernel where it needs one).
        vis = ort.InferenceSession(str(repo / file_for_this_cpu(manifest.variant(Modality.IMAGE, p)).file), options)
        txt = ort.InferenceSession(str(repo / file_for_this_cpu(manifest.variant(Modality.TEXT, p)).file), options)
        rows += _rows(
            f"ONNX Runtime {p.upper()}",
            "onnx",
            str(p),
            lambda x, s=vis: s.run(None, {"pixel_values": x}),
            lambda b, s=txt: s.run(None, {"input_ids": b.input_ids, "attention_mask": b.attention_mask}),
            inputs,
        )
    _time_round_robin(rows, repeat_small, repeat_large)

    def find(runtime: str, precision: str, per_row: bool) -> Row | None:
        return next(
            (r for r in rows if (r.runtime, r.precision, r.per_row) == (runtime, precision, per_row)),
            None,
        )

    table = []
    for r in rows:
        same_precision = None if r.runtime == "torch" else find("torch", r.precision, r.per_row)
        # Against FP32 on the same runtime, batched like it: per-row INT8 has no per-row FP32 to compare with.
        fp32 = None if r.precision == "fp32" or r.per_row else find(r.runtime, "fp32", False)
        batched = find(r.runtime, r.precision, False) if r.per_row else None
        cells = [f"{r.ms[c]:.1f}" if c in r.ms else "—" for c in COLUMNS]
        table.append(
            [
                r.name,
                *cells[:2],
                f"{32000 / r.ms['image b32']:.0f}",
                *cells[2:],
                f"{32000 / r.ms['text b32 short']:.0f}",
                _ratio(same_precision, r),
                _ratio(fp32, r),
                _ratio(batched, r).removeprefix("b32 "),
            ]
        )
    sizes = {
        p: manifest.variant(Modality.IMAGE, p).size_bytes + manifest.variant(Modality.TEXT, p).size_bytes
        for p in Precision
    }
    jpeg = _sample_jpeg()
    prep = median_ms(lambda: load_image_tensor(jpeg, manifest.image, _limits()), repeat_small)
    rss = {
        f"onnxruntime {p.upper()}, no torch imported": _rss_mb(
            "import asyncio\nfrom pipeline.encoders.onnx import OnnxEncoder\nfrom pipeline.types import Precision\n"
            f"e = OnnxEncoder.load({str(repo)!r}, precision=Precision({str(p)!r}))\n"
            "asyncio.run(e.encode_texts(['red mug']))"
        )
        for p in (Precision.FP32, Precision.INT8)
    }
    for precision in ("fp32", "int8"):
        rss[f"PyTorch eager {precision.upper()}"] = _rss_mb(
            "import torch\nfrom bench.peer import eager_clip\n"
            f"m = eager_clip({str(checkpoint)!r}, {precision!r})\n"
            "m.get_text_features(input_ids=torch.tensor([[0, 5, 1]]))"
        )
    notes = (
        "Model files (text + vision): "
        + ", ".join(f"{p.upper()} {sizes[p] / 1e6:.0f} MB" for p in Precision)
        + f". Image preprocessing (640x480 JPEG decode → tensor): {prep:.1f} ms.\n"
        + "Peak RSS of a process that loads the model and embeds one text: "
        + "; ".join(f"{k}: {v:.0f} MB" for k, v in rss.items())
        + ".\n"
        "Short text = 3 words (6 tokens incl. bos/eos), padded to the batch's longest; full = 77 tokens. "
        "INT8 rows come twice: batched (a batch of 32 in one model call: dynamic quantisation then scales "
        "activations over the whole call, so a vector depends on its batch-mates) and per-row (the same 32 inputs "
        "as 32 calls of one: batch-independent, what the service's in-process and Triton INT8 run); at batch 1 the "
        "two are the same call, shown once. img/s and texts/s = 32 inputs / the b32 median. Timed in "
        f"{max(1, repeat_large)} rounds, each timing every row in turn ({repeat_small} b1 and {max(1, repeat_large)} "
        "b32 calls per cell in all, after untimed ones), so slow drifts of a shared machine's load reach every row. "
        "Ratio cells are image / short text, at b1 and b32 (>1: this row faster): 'vs PyTorch eager' divides the "
        "PyTorch row of the same precision and the same calls (batched or per-row) by this one (what the runtime "
        "gains); 'vs FP32' divides the same runtime's batched FP32 row by this one (what the precision gains); "
        "'per-row vs batched' divides the same model's batched b32 by its per-row b32 (what batch independence "
        "costs). FP16 is the GPU variant, timed here on CPU for completeness (no PyTorch FP16 row: eager FP16 on "
        "CPU is not a configuration anyone serves)."
    )
    show(
        "Encoders, ViT-B/32 shapes, median ms per call",
        [
            "backend",
            "image b1",
            "image b32",
            "img/s b32",
            "text b1 short",
            "text b1 full",
            "text b32 short",
            "text b32 full",
            "texts/s b32 short",
            "vs PyTorch eager, same precision and calls",
            "vs FP32, same runtime",
            "per-row vs batched, b32",
        ],
        table,
        "encoders",
        notes,
    )
    print(json.dumps({"rows": [{"name": r.name, **r.ms} for r in rows]}), file=sys.stderr)


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
