"""The offline demo catalog: products the project draws itself, so the demo needs no download.

Six categories x eight colours x four patterns, several products per combination, each drawn at a random angle,
size, position and background; names and descriptions say what is drawn ("blue striped t-shirt"), in English and in
Arabic (``attributes.name_ar``, ``description_ar``; ``parallel.jsonl`` pairs the titles for ``train
--distill-text``). ``captions.jsonl`` gives each product sentences a shopper would type (synonyms, the pattern said
another way, what it is for: :mod:`pipeline.demo_phrasings`), which ``train --captions auto`` samples among with the
title and description; ``paraphrases.jsonl`` pairs each title with the captions of its look (and every title of a
kind of item with the captions that name only the kind), which ``make demo`` distils into the multilingual text
tower beside the translations (README, "Natural phrasing"). A held-out set of new
drawings (other seeds) with their titles in both languages, and ``phrasings_heldout.jsonl``, queries in sentence
frames the captions never use, measure retrieval after training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.demo_phrasings import captions, heldout_queries

SIZE = 256
COLORS = {
    "red": (205, 35, 40), "blue": (35, 75, 200), "green": (40, 150, 60), "yellow": (240, 205, 40),
    "black": (25, 25, 28), "white": (248, 248, 245), "pink": (240, 130, 180), "orange": (240, 130, 30),
}  # fmt: skip
PATTERNS = ("plain", "striped", "dotted", "checked")
BRANDS = ("Northwind", "Acme", "Lumen", "Fjord", "Kestrel", "Ostara")
PRICES = {"t-shirt": 19.0, "mug": 12.0, "cap": 22.0, "sneaker": 79.0, "tote bag": 29.0, "vase": 39.0}


_TSHIRT = [
    (0.3, 0.15),
    (0.42, 0.1),
    (0.58, 0.1),
    (0.7, 0.15),
    (0.92, 0.32),
    (0.8, 0.45),
    (0.72, 0.38),
    (0.72, 0.9),
    (0.28, 0.9),
    (0.28, 0.38),
    (0.2, 0.45),
    (0.08, 0.32),
]
_SNEAKER = [(0.08, 0.7), (0.1, 0.45), (0.35, 0.4), (0.55, 0.55), (0.85, 0.6), (0.93, 0.72), (0.9, 0.78), (0.1, 0.78)]


def _tshirt(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon([(x * s, y * s) for x, y in _TSHIRT], fill=255)


def _mug(d: ImageDraw.ImageDraw, s: float) -> None:
    d.rounded_rectangle((0.22 * s, 0.22 * s, 0.68 * s, 0.85 * s), radius=0.05 * s, fill=255)
    d.ellipse((0.58 * s, 0.35 * s, 0.88 * s, 0.7 * s), outline=255, width=int(0.06 * s))


def _cap(d: ImageDraw.ImageDraw, s: float) -> None:
    d.chord((0.18 * s, 0.25 * s, 0.78 * s, 0.85 * s), 180, 360, fill=255)
    d.ellipse((0.5 * s, 0.5 * s, 0.95 * s, 0.62 * s), fill=255)


def _sneaker(d: ImageDraw.ImageDraw, s: float) -> None:
    d.polygon([(x * s, y * s) for x, y in _SNEAKER], fill=255)


def _tote(d: ImageDraw.ImageDraw, s: float) -> None:
    d.rectangle((0.2 * s, 0.38 * s, 0.8 * s, 0.9 * s), fill=255)
    d.arc((0.32 * s, 0.12 * s, 0.68 * s, 0.6 * s), 180, 360, fill=255, width=int(0.04 * s))


def _vase(d: ImageDraw.ImageDraw, s: float) -> None:
    d.ellipse((0.25 * s, 0.35 * s, 0.75 * s, 0.92 * s), fill=255)
    d.rectangle((0.4 * s, 0.12 * s, 0.6 * s, 0.45 * s), fill=255)
    d.ellipse((0.34 * s, 0.08 * s, 0.66 * s, 0.18 * s), fill=255)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, float], None]] = {
    "t-shirt": _tshirt, "mug": _mug, "cap": _cap, "sneaker": _sneaker, "tote bag": _tote, "vase": _vase,
}  # fmt: skip


def _fill(color: str, pattern: str, rng: np.random.Generator) -> Image.Image:
    base = COLORS[color]
    ink = (30, 30, 30) if sum(base) > 450 else (250, 250, 250)
    img = Image.new("RGB", (SIZE, SIZE), base)
    d = ImageDraw.Draw(img)
    step = int(rng.integers(18, 30))
    if pattern == "striped":
        for x in range(-SIZE, 2 * SIZE, step):
            d.rectangle((x, 0, x + step // 2 - 1, SIZE), fill=ink)
        img = img.rotate(float(rng.choice([0, 90, 45])), fillcolor=ink)
    elif pattern == "dotted":
        r = step // 5
        for y in range(step // 2, SIZE, step):
            for x in range(step // 2, SIZE, step):
                d.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    elif pattern == "checked":
        for y in range(0, SIZE, step):
            for x in range(0, SIZE, step):
                if (x // step + y // step) % 2:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    return img


def draw_product(category: str, color: str, pattern: str, seed: int) -> Image.Image:
    """One photo-like drawing: the item at a random angle, scale and place on a light, noisy background."""
    rng = np.random.default_rng(seed)
    mask = Image.new("L", (SIZE, SIZE), 0)
    SHAPES[category](ImageDraw.Draw(mask), SIZE)
    angle = float(rng.uniform(-25, 25))
    scale = float(rng.uniform(0.65, 0.95))
    item = _fill(color, pattern, rng)
    rgba = Image.merge("RGBA", (*item.split(), mask)).rotate(angle, resample=Image.Resampling.BICUBIC)
    new = int(SIZE * scale)
    rgba = rgba.resize((new, new), Image.Resampling.BICUBIC)
    bg_tone = rng.integers(205, 250, 3)
    noise = rng.normal(0, 6, (SIZE, SIZE, 3))
    canvas = Image.fromarray(np.clip(bg_tone + noise, 0, 255).astype(np.uint8), "RGB")
    shadow = Image.new("RGBA", rgba.size, (0, 0, 0, 0))
    shadow.putalpha(rgba.getchannel("A").point(lambda a: int(a * 0.25)).filter(ImageFilter.GaussianBlur(6)))
    x, y = (int(v) for v in rng.integers(0, SIZE - new + 1, 2))
    canvas.paste(shadow, (min(x + 6, SIZE - new), min(y + 6, SIZE - new)), shadow)
    canvas.paste(rgba, (x, y), rgba)
    if color == "white":  # a white item on a light background needs its edge, as in a real photo
        edge = rgba.getchannel("A").filter(ImageFilter.FIND_EDGES).point(lambda a: 120 if a > 40 else 0)
        canvas.paste((150, 150, 150), (x, y), edge)
    return canvas


@dataclass(frozen=True)
class DemoSummary:
    products: int
    images: int
    heldout: int
    catalog: Path
    heldout_file: Path


def title(color: str, pattern: str, category: str) -> str:
    return f"{color} {category}" if pattern == "plain" else f"{color} {pattern} {category}"


# Arabic: the noun first, then its adjectives, which agree with it in gender ("حقيبة قماشية زرقاء مخططة").
_AR_NOUNS = {
    "t-shirt": ("تيشيرت", False), "mug": ("كوب", False), "cap": ("قبعة", True),
    "sneaker": ("حذاء رياضي", False), "tote bag": ("حقيبة قماشية", True), "vase": ("مزهرية", True),
}  # fmt: skip
_AR_COLORS = {
    "red": ("أحمر", "حمراء"), "blue": ("أزرق", "زرقاء"), "green": ("أخضر", "خضراء"), "yellow": ("أصفر", "صفراء"),
    "black": ("أسود", "سوداء"), "white": ("أبيض", "بيضاء"), "pink": ("وردي", "وردية"),
    "orange": ("برتقالي", "برتقالية"),
}  # fmt: skip
_AR_PATTERNS = {"striped": ("مخطط", "مخططة"), "dotted": ("منقط", "منقطة"), "checked": ("بمربعات", "بمربعات")}


def title_ar(color: str, pattern: str, category: str) -> str:
    """The Arabic title of what is drawn: the same words as :func:`title`."""
    noun, feminine = _AR_NOUNS[category]
    words = [noun, _AR_COLORS[color][feminine]]
    if pattern != "plain":
        words.append(_AR_PATTERNS[pattern][feminine])
    return " ".join(words)


def build_demo_catalog(out: Path, per_combination: int = 12, heldout_per_combination: int = 2,
                       seed: int = 0) -> DemoSummary:  # fmt: skip
    """Write ``out/catalog.jsonl``, ``out/heldout.jsonl``, ``captions.jsonl``, ``phrasings_heldout.jsonl``,
    ``parallel.jsonl``, ``paraphrases.jsonl`` and the images under ``out/images/`` and ``out/heldout/``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, heldout, n_images = [], [], 0
    parallel: list[dict[str, str]] = []
    caption_rows: list[dict[str, object]] = []
    # for train --distill-text: each look's title -> its captions; a kind of item's titles -> captions naming it
    look_captions: dict[str, dict[str, None]] = {}
    kind_captions: dict[str, dict[str, None]] = {}
    caption_rng = random.Random(seed)
    combos = [(c, col, p) for c in SHAPES for col in COLORS for p in PATTERNS]
    for k, (category, color, pattern) in enumerate(combos):
        name, name_ar = title(color, pattern, category), title_ar(color, pattern, category)
        parallel.append({"source": name, "target": name_ar})
        for v in range(per_combination):
            pid = f"{category.replace(' ', '-')}-{color}-{pattern}-{v:02d}"
            images = []
            for view in range(1 + int(rng.random() < 0.3)):  # some products have a second photo
                rel = f"images/{pid}-{view}.jpg"
                draw_product(category, color, pattern, seed=seed * 1_000_003 + k * 1000 + v * 10 + view).save(
                    out / rel, quality=88
                )
                images.append(rel)
                n_images += 1
            brand = BRANDS[int(rng.integers(len(BRANDS)))]
            price = round(PRICES[category] * float(rng.uniform(0.7, 1.6)), 2)
            rows.append({
                "id": pid, "name": name.capitalize(),
                "description": f"A {name} by {brand}.", "brand": brand, "category": category, "color": color,
                "price": price, "images": images,
                "attributes": {"pattern": pattern, "name_ar": name_ar, "description_ar": f"{name_ar} من {brand}."},
            })  # fmt: skip
            texts = captions(category, color, pattern, caption_rng)
            caption_rows.append({"id": pid, "texts": texts})
            for text in texts:
                if isinstance(text, str):
                    look_captions.setdefault(name, {})[text] = None
                else:
                    kind_captions.setdefault(category, {})[text["text"]] = None
        for h in range(heldout_per_combination):
            rel = f"heldout/{category.replace(' ', '-')}-{color}-{pattern}-{h}.jpg"
            draw_product(category, color, pattern, seed=10**9 + seed * 1_000_003 + k * 100 + h).save(
                out / rel, quality=88
            )
            heldout.append({"image": rel, "title": name, "title_ar": name_ar, "category": category, "color": color,
                            "pattern": pattern})  # fmt: skip
    catalog, heldout_file = out / "catalog.jsonl", out / "heldout.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout_file.write_text("".join(json.dumps(r) + "\n" for r in heldout))
    # English titles and their Arabic translations: what `train --distill-text` learns from.
    (out / "parallel.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in parallel))
    (out / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caption_rows))
    titles_of = {c: [title(col, p, c) for col in COLORS for p in PATTERNS] for c in SHAPES}
    paraphrases: list[dict[str, str | list[str]]] = [
        {"source": name, "target": t} for name, texts in look_captions.items() for t in texts
    ]
    paraphrases += [{"source": titles_of[c], "target": t} for c, texts in kind_captions.items() for t in texts]
    (out / "paraphrases.jsonl").write_text("".join(json.dumps(p) + "\n" for p in paraphrases))
    queries = heldout_queries(list(SHAPES), list(COLORS), list(PATTERNS), seed)
    (out / "phrasings_heldout.jsonl").write_text("".join(json.dumps(q.__dict__) + "\n" for q in queries))
    return DemoSummary(len(rows), n_images, len(heldout), catalog, heldout_file)
