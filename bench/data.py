"""Synthetic data for the benchmarks: product images, products, and clustered unit vectors."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pipeline.schemas import Product

CATEGORIES = ["mug", "shirt", "poster", "shoe", "bag", "lamp", "hat", "chair"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]
BRANDS = ["acme", "zeta", "nova", "orbit"]


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A product-like JPEG: a coloured shape on a light, noisy background (q90, ~30-60 KB)."""
    rng = np.random.default_rng(seed)
    arr = (rng.normal(230, 12, (size[1], size[0], 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    color = tuple(int(v) for v in rng.integers(0, 255, 3))
    w, h = size
    d.ellipse((w * 0.2, h * 0.2, w * 0.8, h * 0.8), fill=color)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def product(i: int, images: list[str]) -> Product:
    return Product(
        id=f"p{i:06d}",
        name=f"{COLORS[i % 6]} {CATEGORIES[i % 8]} {i}",
        brand=BRANDS[i % 4],
        category=CATEGORIES[i % 8],
        color=COLORS[i % 6],
        price=float(5 + i % 200),
        images=images,
    )


def clustered(n: int, dim: int, seed: int, clusters: int = 64) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (real embeddings cluster; uniform noise is a worst case)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vecs = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
