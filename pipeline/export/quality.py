"""How much a reduced-precision variant changes the embeddings, measured against FP32 at export time.

On a calibration set (a catalog's images and titles when given, drawn demo products otherwise) both towers
of FP32 and of the variant embed the same inputs. Figures: cosine to FP32 per vector (mean, worst), centred
on the FP32 mean so a model that maps everything near one direction cannot hide a broken variant, and the
overlap of text→image top-10 neighbours with FP32's. The export gate serves a variant only above thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import ImageSpec, TextSpec, VariantQuality
from pipeline.preprocess import TextTokenizer, image_to_tensor, load_image_tensor

MIN_CALIBRATION = 10  # fewer pairs than this make the gate's figures noise


@dataclass(frozen=True)
class CalibrationSet:
    pixels: np.ndarray  # float32 [N, 3, S, S]
    texts: list[str]
    source: str
    skipped: int = 0  # images that could not be read and were left out

    def halves(self) -> tuple[CalibrationSet, CalibrationSet]:
        """Two disjoint sets, alternate rows: one to calibrate on, one to evaluate on (so an evaluation never
        scores inputs a static quantiser saw)."""
        return (
            CalibrationSet(self.pixels[0::2], self.texts[0::2], f"{self.source}, even rows", self.skipped),
            CalibrationSet(self.pixels[1::2], self.texts[1::2], f"{self.source}, odd rows", self.skipped),
        )


def generated_calibration(spec: ImageSpec, n: int = 96, seed: int = 7) -> CalibrationSet:
    """Drawn products (the demo catalog's generator): varied shapes, colours and patterns with their titles,
    each combination at most once (so at most 192)."""
    from pipeline.demo_catalog import COLORS, PATTERNS, SHAPES, draw_product, title

    rng = np.random.default_rng(seed)
    combos = [(c, col, p) for c in SHAPES for col in COLORS for p in PATTERNS]
    picks = [combos[i] for i in rng.choice(len(combos), size=min(n, len(combos)), replace=False)]
    pixels = np.stack([image_to_tensor(draw_product(c, col, p, seed=seed * 7919 + i), spec)
                       for i, (c, col, p) in enumerate(picks)])  # fmt: skip
    return CalibrationSet(pixels, [title(col, p, c) for c, col, p in picks], "generated (drawn products)")


def catalog_calibration(catalog: Path, spec: ImageSpec, n: int = 128) -> CalibrationSet:
    """``n`` products spread evenly over the catalog (catalogs are often sorted by category), first image each,
    with their titles. Unreadable images (missing, corrupt, not an image) are skipped and counted in ``skipped``.

    Raises InvalidInput when the catalog cannot be read or fewer than 10 of the picked images are readable.
    """
    from pipeline.catalog import read_catalog

    products = [row.product for row in read_catalog(catalog) if row.product is not None]
    picks = sorted(set(np.linspace(0, len(products) - 1, num=min(n, len(products)), dtype=int).tolist()))
    limits, pixels, texts, unreadable = LimitsSettings(), [], [], []
    for product in (products[i] for i in picks):
        image = product.images[0]
        try:
            pixels.append(load_image_tensor(Path(image).read_bytes(), spec, limits, name=str(image)))
        except OSError as exc:
            unreadable.append(f"{image}: cannot read ({exc.strerror or exc})")
            continue
        except InvalidInput as exc:
            unreadable.append(str(exc))
            continue
        texts.append(product.embedding_text())
    if len(pixels) < MIN_CALIBRATION:
        example = f"; first unreadable: {unreadable[0]}" if unreadable else ""
        raise InvalidInput(
            f"{catalog}: {len(pixels)} readable images among {len(picks)} products picked for calibration "
            f"({len(unreadable)} unreadable{example}); the INT8 gate needs at least {MIN_CALIBRATION}"
        )
    skipped = f"; {len(unreadable)} unreadable images skipped" if unreadable else ""
    return CalibrationSet(
        np.stack(pixels), texts, f"catalog {catalog} ({len(pixels)} pairs, spread evenly{skipped})", len(unreadable)
    )


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def embed(text_model: Path, image_model: Path, calib: CalibrationSet, tokenizer: TextTokenizer,
          batch: int = 32) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    text_s, image_s = _session(text_model), _session(image_model)
    images = np.concatenate([image_s.run(None, {"pixel_values": calib.pixels[i : i + batch]})[0]
                             for i in range(0, len(calib.pixels), batch)])  # fmt: skip
    texts = []
    for i in range(0, len(calib.texts), batch):
        tok = tokenizer(calib.texts[i : i + batch])
        texts.append(text_s.run(None, {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask})[0])
    return np.concatenate(texts), images


def centred_cosine(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu = ref.mean(axis=0)
    a, r = out - mu, ref - mu
    return (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-12)


def topk_overlap(q_ref: np.ndarray, c_ref: np.ndarray, q_var: np.ndarray, c_var: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's top-k corpus items that the variant keeps."""
    k = min(k, len(c_ref))
    ref = np.argsort(-(q_ref @ c_ref.T), axis=1)[:, :k]
    var = np.argsort(-(q_var @ c_var.T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, var, strict=True)]))


def compare(reference: tuple[np.ndarray, np.ndarray], variant: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Figures of a variant's (texts, images) against FP32's on the same inputs."""
    (t_ref, i_ref), (t_var, i_var) = reference, variant
    ct, ci = centred_cosine(t_var, t_ref), centred_cosine(i_var, i_ref)
    return {
        "text_cosine_mean": round(float(ct.mean()), 5), "text_cosine_min": round(float(ct.min()), 5),
        "image_cosine_mean": round(float(ci.mean()), 5), "image_cosine_min": round(float(ci.min()), 5),
        "top10_overlap": round(topk_overlap(t_ref, i_ref, t_var, i_var), 4),
    }  # fmt: skip


def gate(figures: dict[str, float], min_cosine: float, min_overlap: float, calibration: str) -> VariantQuality:
    reasons = []
    for tower in ("text", "image"):
        if figures[f"{tower}_cosine_mean"] < min_cosine:
            reasons.append(f"{tower} cosine to FP32 {figures[f'{tower}_cosine_mean']:.3f} < {min_cosine}")
    if figures["top10_overlap"] < min_overlap:
        reasons.append(f"top-10 overlap with FP32 {figures['top10_overlap']:.2f} < {min_overlap}")
    return VariantQuality(servable=not reasons, reasons=reasons, figures=figures, calibration=calibration,
                          min_cosine=min_cosine, min_overlap=min_overlap)  # fmt: skip


def measure(repository_files: dict[str, tuple[Path, Path]], fp32: tuple[Path, Path], calib: CalibrationSet,
            text_spec: TextSpec, tokenizer_file: Path, min_cosine: float, min_overlap: float,
            precisions: Sequence[str]) -> dict[str, VariantQuality]:  # fmt: skip
    """Gate each named variant (text model, image model) against the FP32 pair."""
    tokenizer = TextTokenizer(tokenizer_file, text_spec)
    reference = embed(*fp32, calib, tokenizer)
    return {
        name: gate(compare(reference, embed(*repository_files[name], calib, tokenizer)), min_cosine, min_overlap,
                   calib.source)
        for name in precisions
    }  # fmt: skip
