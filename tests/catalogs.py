"""A small generated catalog: coloured shapes on varied backgrounds, with one or two images per product."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (210, 40, 40), "blue": (40, 60, 210), "green": (40, 170, 60), "yellow": (230, 210, 40)}
CATEGORIES = {"mug": "ellipse", "shirt": "rectangle", "poster": "polygon"}
BRANDS = ["acme", "zeta"]


def draw(color: str, category: str, seed: int, size: tuple[int, int] = (320, 256)) -> Image.Image:
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(200, 255, 3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    w, h = size
    box = (w * 0.2 + rng.integers(0, 20), h * 0.2, w * 0.8, h * 0.8 - rng.integers(0, 20))
    shape = CATEGORIES[category]
    if shape == "ellipse":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "rectangle":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(w / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLORS[color])
    return img


def products(folder: Path) -> list[dict]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for color in COLORS:
        for category in CATEGORIES:
            for variant in range(2):
                n += 1
                pid = f"{category}-{color}-{variant}"
                images = []
                for k in range(1 + (n % 2)):  # every other product has two images
                    name = f"img/{pid}-{k}.jpg"
                    draw(color, category, seed=n * 10 + k).save(folder / name, quality=90)
                    images.append(name)
                rows.append(
                    {
                        "id": pid,
                        "name": f"{color} {category} {variant}",
                        "description": f"A {color} {category}.",
                        "brand": BRANDS[n % 2],
                        "category": category,
                        "color": color,
                        "price": float(5 + n),
                        "images": images,
                        "attributes": {"variant": variant},
                    }
                )
    return rows


def write_catalog(folder: Path) -> Path:
    rows = products(folder)
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def write_bad_catalog(folder: Path) -> tuple[Path, dict[int, str]]:
    """Good rows mixed with every kind of bad one; returns the path and {line: expected reason fragment}."""
    good = products(folder)[:4]
    (folder / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("L", (8000, 8000), 255).save(folder / "img" / "bomb.png")
    lines = [json.dumps(r) for r in good]
    bad = {
        5: ('{"id": "x1", "name": "no images"}', "images"),
        6: ('{"id": "x2", "name": "neg", "price": -3, "images": ["img/a.jpg"]}', "price"),
        7: ("{broken json", "invalid JSON"),
        8: (json.dumps({"id": "x3", "name": "missing file", "images": ["img/nope.jpg"]}), "cannot read"),
        9: (json.dumps({"id": "x4", "name": "corrupt", "images": ["img/corrupt.jpg"]}), "corrupt.jpg: not"),
        10: (json.dumps({"id": "x5", "name": "bomb", "images": ["img/bomb.png"]}), "pixels is over the limit"),
        11: (json.dumps({**good[0], "name": "again"}), "duplicate id"),
        12: (json.dumps({"id": "x6", "name": "ftp", "images": ["ftp://example.com/a.jpg"]}), "http(s)"),
        13: ("[1, 2, 3]", "JSON object"),
        14: (json.dumps({"id": "x7", "name": "attrs", "images": ["img/a.jpg"], "attributes": [1]}), "JSON object"),
    }
    lines += [text for _, (text, _) in sorted(bad.items())]
    path = folder / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {line: reason for line, (_, reason) in bad.items()}
