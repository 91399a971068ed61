"""``python -m pipeline train``: contrastive fine-tuning of CLIP on a catalog's image-text pairs.

Each image is paired with its product's title; with captions (``--captions``), at every step anew with one of its
product's texts: the title half the time, otherwise the description or one of the product's captions
(``captions.jsonl`` beside the catalog, or ``--captions``: JSON lines ``{"id", "texts"}``, sentences a shopper would
type), so the model learns more than the title template. Loss: CLIP's symmetric InfoNCE with in-batch negatives,
plus hard-negative titles (the same category in another colour; with captions, also the same colour in another
category) that every image must rank below its own texts. Pairs in a batch that describe the same look (the same
title) are not counted as negatives. SRC is a checkpoint (hub id or folder) to adapt, or ``small``: a compact CLIP
built from a config with a tokenizer trained on the catalog's own words, which learns the demo catalog in minutes on
two CPU cores. Recall@1/5/10 on held-out pairs (and on held-out shopper phrasings, when the catalog has them) is
measured before and after; the output folder is what ``export`` takes.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.catalog import read_catalog
from pipeline.config import LimitsSettings
from pipeline.errors import InvalidInput
from pipeline.export import train_eval as ev
from pipeline.manifest import ImageSpec

Log = Callable[[str], None]
SMALL = "small"
AUTO = "auto"


@dataclass
class TrainReport:
    pairs: int
    heldout: int
    epochs: int
    seconds: float
    before: dict[str, float]
    after: dict[str, float]
    captions: int = 0  # products with captions beyond title and description
    phrasings_before: dict[str, float] = field(default_factory=dict)
    phrasings_after: dict[str, float] = field(default_factory=dict)


def small_config(vocab_size: int, bos: int, eos: int) -> Any:
    from pipeline.export.tiny import tiny_clip_config

    return tiny_clip_config(
        vocab_size, bos, eos,
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
        vision=dict(hidden_size=192, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                    patch_size=16),
        projection_dim=128,
    )  # fmt: skip


@dataclass(frozen=True)
class _Looks:
    """The catalog's titles by category and by colour (the hard negatives are drawn from them)."""

    by_category: dict[str, list[tuple[str, str]]]  # category -> (title, colour)
    by_color: dict[str, list[tuple[str, str]]]  # colour -> (title, category)
    both_axes: bool  # also a title of the same colour in another category (when training with captions)

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> _Looks:
        looks = dict.fromkeys(
            (r["text"], r["category"], r["color"]) for r in rows if r.get("kind", "catalog") == "catalog"
        )
        by_category: dict[str, list[tuple[str, str]]] = {}
        by_color: dict[str, list[tuple[str, str]]] = {}
        for title, category, color in looks:
            by_category.setdefault(category, []).append((title, color))
            by_color.setdefault(color, []).append((title, category))
        return cls(by_category, by_color, any(len(r.get("texts", ())) > 1 for r in rows))

    def hard_negatives(self, row: dict[str, Any], rng: random.Random) -> list[str]:
        """For a catalog row: a title of its category in another colour, and (with captions) one of its colour in
        another category (so neither colour nor kind alone can tell an image's own title from the others)."""
        if row.get("kind", "catalog") != "catalog":
            return []
        out = []
        if row["category"]:
            others = [t for t, c in self.by_category.get(row["category"], []) if c != row["color"]]
            out += [rng.choice(others)] if others else []
        if row["color"] and self.both_axes:
            others = [t for t, c in self.by_color.get(row["color"], []) if c != row["category"]]
            out += [rng.choice(others)] if others else []
        return out


@dataclass(frozen=True)
class Caption:
    """A text an image may be paired with. ``names`` None: it describes its product's look (as its title does);
    else the only attributes it names (``category``, ``color``): it fits every product that has them ("a mug"
    fits every mug), and such products are not its negatives."""

    text: str
    names: tuple[tuple[str, str], ...] | None = None

    def fits(self, look: str, row: dict[str, Any]) -> bool:
        """Whether this caption, written for a product titled ``look``, describes the image of training row
        ``row``."""
        if self.names is None:
            return bool(row["text"] == look)
        return all(row.get(field) == value for field, value in self.names)


NAMED = ("category", "color")


def read_captions(path: Path) -> dict[str, list[Caption]]:
    """A captions file → captions by product id. JSON lines ``{"id", "texts": [...]}``; a text is a string (it
    describes the product as its title does) or ``{"text", "category"?, "color"?}`` (it names only those: "a mug
    for tea" names the category alone)."""
    out: dict[str, list[Caption]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions = []
            for t in row["texts"]:
                if isinstance(t, dict):
                    names = tuple((f, str(t[f]).strip().lower()) for f in NAMED if t.get(f))
                    if not names:
                        raise ValueError(f"{t!r} names neither a category nor a colour")
                    captions.append(Caption(str(t["text"]).strip().lower(), names))
                else:
                    captions.append(Caption(str(t).strip().lower()))
            out.setdefault(str(row["id"]), []).extend(c for c in captions if c.text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"{path}:{n}: not a caption row {{id, texts}} ({exc})") from None
    return out


def captioned_pairs(catalog: Path, captions: Path | str | None) -> tuple[list[dict[str, Any]], int]:
    """The catalog's training rows with the captions ``--captions`` names (a file, ``"auto"``: captions.jsonl
    beside the catalog when there is one, or None: titles only), and how many products have captions."""
    caption_file = Path(catalog).with_name("captions.jsonl") if captions == AUTO else captions
    if caption_file is not None and not Path(caption_file).is_file():
        if captions != AUTO:
            raise InvalidInput(f"{caption_file}: no such captions file")
        caption_file = None  # auto, and none beside the catalog: titles only, as without --captions
    if caption_file is None:
        return catalog_pairs(catalog), 0
    by_id = read_captions(Path(caption_file))
    if not by_id:
        raise InvalidInput(f"{caption_file}: no captions")
    return catalog_pairs(catalog, by_id), sum(1 for texts in by_id.values() if texts)


def catalog_pairs(catalog: Path, captions: dict[str, list[Caption]] | None = None) -> list[dict[str, Any]]:
    """A catalog's training rows, one per image: the title (``text``, which also names the look: rows with the
    same title are not each other's negatives) and every text the image may be paired with (``texts``: title,
    description, the product's captions)."""
    rows: list[dict[str, Any]] = []
    for row in read_catalog(catalog):
        if (p := row.product) is None:
            continue
        title = p.name.lower()
        own = [Caption(title)]
        if captions is not None:
            own += [Caption(p.description.strip().lower()), *captions.get(p.id, [])]
        texts = [c for c in dict.fromkeys(own) if c.text]
        for image in p.images:
            rows.append({"image": image, "text": title, "texts": texts, "category": (p.category or "").lower(),
                         "color": (p.color or "").lower(), "kind": "catalog"})  # fmt: skip
    return rows


def _sample_text(row: dict[str, Any], rng: random.Random) -> Caption:
    """The title half the time, otherwise one of the row's other texts."""
    others = row.get("texts", [])[1:]
    return rng.choice(others) if others and rng.random() >= 0.5 else Caption(str(row["text"]))


def read_pairs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A pairs file (JSON lines: ``image``, ``text``, optional ``category``, ``color``, ``negatives`` (images a
    shopper skipped for this text), ``kind`` (catalog|click) and ``split`` (train|heldout)) → train rows and
    held-out rows. Relative image paths are taken from the file's folder."""
    train_rows: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["image"], row["text"] = str(row["image"]), str(row["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{path}:{n}: not a pair ({exc})") from None
        base = Path(path).parent
        row["image"] = str(base / row["image"])
        row["negatives"] = [str(base / p) for p in row.get("negatives", [])]
        row.setdefault("category", "")
        row.setdefault("color", "")
        row.setdefault("kind", "catalog")
        (held if row.get("split") == "heldout" else train_rows).append(row)
    return train_rows, held


def train(source: str, catalog: Path | None, out: Path, *, heldout: Path | None = None, epochs: int = 12,
          batch_size: int = 64, lr: float | None = None, seed: int = 0, log: Log = print,
          pairs: Path | None = None, captions: Path | str | None = None) -> TrainReport:  # fmt: skip
    """Fine-tune ``source`` on ``catalog`` (or on a ``pairs`` file: catalog pairs and pairs mined from clicks,
    with the images shoppers skipped as negatives) and save the result to ``out`` (a save_pretrained folder).
    ``captions``: a captions file, ``"auto"`` (``captions.jsonl`` beside the catalog when there is one) or None
    (titles only, the default). Held-out shopper phrasings (``phrasings_heldout.jsonl`` beside the catalog)
    are measured before and after when present."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    from pipeline.export.repository import read_clip_config, resolve_source
    from pipeline.export.tiny import train_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    limits = LimitsSettings()
    queries: list[dict[str, Any]] = []
    n_captioned = 0
    if pairs is not None:
        rows, held = read_pairs(pairs)
        source_name = str(pairs)
    elif catalog is not None:
        rows, n_captioned = captioned_pairs(catalog, captions)
        phrasings_file = Path(catalog).with_name("phrasings_heldout.jsonl")
        queries = ev.read_phrasings(phrasings_file) if phrasings_file.is_file() else []
        heldout = heldout or Path(catalog).with_name("heldout.jsonl")
        held = [json.loads(line) for line in heldout.read_text().splitlines()] if heldout.is_file() else []
        for h in held:
            h["image"] = str((heldout.parent / h["image"]).resolve())
            h["text"] = h.pop("title")
        source_name = str(catalog)
    else:
        raise InvalidInput("give a catalog or a pairs file to train on")
    if not rows:
        raise InvalidInput(f"{source_name}: no valid rows to train on")

    out = Path(out)
    if source == SMALL:
        words = [r["text"] for r in rows] + [c.text for r in rows for c in r.get("texts", [])[1:]]
        words += [r["text"] for r in held]
        train_tokenizer(out, vocab_size=1200, corpus=words * 3)
        tokenizer = CLIPTokenizer.from_pretrained(out)
        model = CLIPModel(small_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
        lr = lr or 5e-4
    else:
        folder = resolve_source(source)
        read_clip_config(folder)
        model = CLIPModel.from_pretrained(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        lr = lr or 1e-5
    spec = ImageSpec(size=int(model.config.vision_config.image_size))  # type: ignore[union-attr,arg-type]

    # Every image once (a product's image is shared by its catalog pair and its click pairs).
    paths = list(dict.fromkeys([r["image"] for r in rows] + [p for r in rows for p in r.get("negatives", [])]))
    log(f"loading {len(paths)} training images and {len(held)} held-out images")
    slot = {p: i for i, p in enumerate(paths)}
    images = np.stack([ev.image_uint8(p, spec, limits) for p in paths])
    held_images = np.stack([ev.image_uint8(h["image"], spec, limits) for h in held]) if held else np.zeros((0,))
    held_titles = [h["text"] for h in held]
    before = ev.recall_at_k(model, tokenizer, held_images, held_titles, spec) if held else {}
    if before:
        log(f"held-out before: {before}")
    attrs = [{f: h.get(f) for f in ("category", "color", "pattern")} for h in held]
    queries = queries if held and all(a["category"] for a in attrs) else []

    def measure_phrasings() -> dict[str, float]:
        return ev.phrasing_recall(model, tokenizer, held_images, attrs, queries, spec) if queries else {}

    phrasings_before = measure_phrasings()
    if phrasings_before:
        log(f"held-out phrasings ({len(queries)}) before: {phrasings_before}")

    looks = _Looks.of(rows)
    steps = epochs * math.ceil(len(rows) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = list(range(len(rows)))
        rng.shuffle(order)
        losses = []
        for s in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[s : s + batch_size]]
            loss = _batch_loss(model, tokenizer, batch, images, slot, spec, looks, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
        msg = f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f} ({time.perf_counter() - start:.0f} s)"
        if held and (epoch + 1 == epochs or (epoch + 1) % 4 == 0):
            msg += f", held-out {ev.recall_at_k(model, tokenizer, held_images, held_titles, spec)}"
        log(msg)
    seconds = time.perf_counter() - start
    after = ev.recall_at_k(model, tokenizer, held_images, held_titles, spec) if held else {}
    phrasings_after = measure_phrasings()
    if phrasings_after:
        log(f"held-out phrasings after: {phrasings_after}")
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": spec.size}, crop_size={"height": spec.size, "width": spec.size}
                          ).save_pretrained(out)  # fmt: skip
    report = TrainReport(len(rows), len(held), epochs, round(seconds, 1), before, after, n_captioned,
                         phrasings_before, phrasings_after)  # fmt: skip
    (out / "train_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _batch_loss(model: Any, tokenizer: Any, batch: list[dict[str, Any]], images: np.ndarray, slot: dict[str, int],
                spec: ImageSpec, looks: _Looks, rng: random.Random) -> Any:  # fmt: skip
    """CLIP's symmetric InfoNCE over the batch, with extra negatives: for each image, a title of its category in
    another colour and one of its colour in another category (catalog pairs); for each text, the images a shopper
    skipped for it (click pairs). A pair sharing a look (the title; a click pair's own text), a text or an image
    with another is not that one's negative."""
    import torch

    b = len(batch)
    titles = [r["text"] for r in batch]
    captions = [_sample_text(r, rng) for r in batch]
    hard = [h for r in batch for h in looks.hard_negatives(r, rng)]
    extra = [Caption(h) for h in dict.fromkeys(hard) if h not in titles]
    own = [slot[r["image"]] for r in batch]
    skipped = [slot[p] for r in batch for p in r.get("negatives", [])[:2]]
    extra_img = list(dict.fromkeys(i for i in skipped if i not in own))
    texts = [c.text for c in captions + extra]
    tok = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    img = ev.unit_features(model.get_image_features(pixel_values=ev.to_pixels(images[own + extra_img], spec)))
    txt = ev.unit_features(model.get_text_features(**tok))
    scale = model.logit_scale.exp()
    # fits[a][c]: text c describes the image of row a (its own look, a caption naming only what row a has, or
    # the very text row a was paired with)
    caps_all, looks_all = captions + extra, titles + [e.text for e in extra]
    fits = torch.tensor([[c.fits(look, row) or c.text == mine.text for c, look in zip(caps_all, looks_all, strict=True)]
                         for row, mine in zip(batch, captions, strict=True)])  # fmt: skip
    images_all = own + extra_img
    same_img = torch.tensor([[a == c for c in images_all] for a in own])
    positive = fits[:, :b] | same_img[:, :b]  # [image a, text c]: a shared look, text or image: not a negative
    same_txt = fits  # an extra (hard-negative) title that describes row a's image is not its negative either
    eye = torch.eye(b, dtype=torch.bool)
    i2t = (scale * img[:b] @ txt.T).masked_fill(torch.cat([positive & ~eye, same_txt[:, b:]], 1), float("-inf"))
    t2i = (scale * txt[:b] @ img.T).masked_fill(torch.cat([positive.T & ~eye, same_img[:, b:]], 1), float("-inf"))
    labels = torch.arange(b)
    return (torch.nn.functional.cross_entropy(i2t, labels) + torch.nn.functional.cross_entropy(t2i, labels)) / 2
