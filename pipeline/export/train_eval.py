"""What ``train`` measures: held-out text→image recall for titles, and for shopper phrasings.

Images are decoded and cropped like preprocessing and kept as uint8 (normalised per batch), so training and
evaluation see the pixels the served model sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.manifest import ImageSpec
from pipeline.preprocess import decode_image

KS = (1, 5, 10)


def image_uint8(path: str, spec: ImageSpec, limits: LimitsSettings) -> np.ndarray:
    """Decode, resize and crop like preprocessing, kept as uint8 [224, 224, 3] (normalised per batch)."""
    from PIL import Image

    img = decode_image(Path(path).read_bytes(), limits, name=path)
    w, h = img.size
    s = spec.size
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - s) // 2, (nw - s) // 2
    return np.asarray(img)[top : top + s, left : left + s]


def to_pixels(batch: np.ndarray, spec: ImageSpec) -> Any:
    import torch

    x = torch.from_numpy(batch).float().div_(255).permute(0, 3, 1, 2)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def unit_features(out: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)


def recall_at_k(model: Any, tokenizer: Any, images: np.ndarray, titles: list[str], spec: ImageSpec,
                ks: tuple[int, ...] = KS) -> dict[str, float]:  # fmt: skip
    """Text→image recall@k: each held-out title queries all held-out images; a hit is an image of that title."""
    unique = sorted(set(titles))
    sims = text_image_similarity(model, tokenizer, images, unique, spec)
    label = np.array([unique.index(t) for t in titles])
    out = {}
    for k in ks:
        top = np.argsort(-sims, axis=1)[:, :k]
        hits = [(label[top[q]] == q).any() for q in label]  # one query per held-out pair
        out[f"recall@{k}"] = round(float(np.mean(hits)), 4)
    return out


def text_image_similarity(
    model: Any, tokenizer: Any, images: np.ndarray, texts: list[str], spec: ImageSpec
) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        img = torch.cat([unit_features(model.get_image_features(pixel_values=to_pixels(images[i : i + 64], spec)))
                         for i in range(0, len(images), 64)])  # fmt: skip
        tok = [tokenizer(texts[i : i + 256], padding=True, truncation=True, max_length=77, return_tensors="pt")
               for i in range(0, len(texts), 256)]  # fmt: skip
        txt = torch.cat([unit_features(model.get_text_features(**t)) for t in tok])
    return (txt @ img.T).numpy()


def read_phrasings(path: Path) -> list[dict[str, Any]]:
    """Held-out shopper queries (JSON lines: ``text``, ``frame``, ``category``, ``color``, ``pattern``; a null
    field, or one left out, is one the query does not name)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError("no text")
        except ValueError as exc:
            raise InvalidInput(f"{path}:{n}: not a phrasing row {{text, category?, color?, pattern?}} ({exc})") from exc
        out.append(row)
    return out


def phrasing_recall(model: Any, tokenizer: Any, images: np.ndarray, image_attrs: list[dict[str, Any]],
                    queries: list[dict[str, Any]], spec: ImageSpec) -> dict[str, float]:  # fmt: skip
    """Each held-out phrasing queries all held-out images; an image answers it when it has every attribute the
    query names (category, and colour / pattern where given). recall@k: an answer in the top k;
    precision@10: the share of the top 10 that answer it."""
    return phrasing_scores(text_image_similarity(model, tokenizer, images, [q["text"] for q in queries], spec),
                           image_attrs, queries)  # fmt: skip


def answers(query: dict[str, Any], attrs: dict[str, Any]) -> bool:
    """Whether an item with ``attrs`` (category, color, pattern) has everything a held-out phrasing names."""
    return all(query.get(f) is None or query[f] == attrs.get(f) for f in ("category", "color", "pattern"))


def phrasing_scores(sims: np.ndarray, image_attrs: list[dict[str, Any]],
                    queries: list[dict[str, Any]]) -> dict[str, float]:  # fmt: skip
    """:func:`phrasing_recall`'s figures from a queries x images similarity matrix (any text tower's)."""
    top = np.argsort(-sims, axis=1)[:, : max(KS)]
    ok = np.array([[answers(q, a) for a in image_attrs] for q in queries])
    hit = np.take_along_axis(ok, top, axis=1)
    out = {f"phrasing recall@{k}": round(float(hit[:, :k].any(axis=1).mean()), 4) for k in KS}
    out["phrasing precision@10"] = round(float(hit.mean()), 4)
    return out
