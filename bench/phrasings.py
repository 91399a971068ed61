"""``python -m bench phrasings``: does a model trained with shopper captions understand a shopper's words, and what
does it cost the title template?

Two small CLIPs trained the same way (same catalog, epochs, batch, learning rate, seed): the demo model ``make
demo`` trains (titles only), and its twin trained with captions (``--captions auto``: each photo paired with its
title half the time, else with its description or one of its captions from ``captions.jsonl``; trained here once
into ``DEMO/bench/model-captions``). Both are measured on the 384 held-out drawings (``heldout.jsonl``, never in
the catalog): their titles (the ``train`` command's own measure), and ``phrasings_heldout.jsonl``, shopper queries
in sentence frames no caption uses, grouped by what the query names. A drawing answers a query when it has
everything the query names; recall@k: an answer in the top k; precision@10: the share of the top 10 that answer.
Saved to bench/results/phrasings.md. (Text→image only: the stack also fuses the title space; see ``python -m
bench demo-queries`` for the stack's precision.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import show

EXAMPLES = ("a mug for my morning coffee", "something red for running", "show me hats for a sunny day")
GROUPS = {"category": "phrasings naming the item only", "category+color": "phrasings naming item and colour",
          "category+color+pattern": "phrasings naming item, colour and pattern"}  # fmt: skip


def _twin(demo: Path, catalog: Path) -> Path:
    """The demo model's twin trained with captions: its epoch count, train's other defaults (as make demo's).
    Trained again when the catalog or the demo model is newer than it."""
    out = demo / "bench" / "model-captions"
    sources = (catalog, demo / "model" / "model.safetensors")
    twin = out / "model.safetensors"
    if twin.is_file() and all(twin.stat().st_mtime > s.stat().st_mtime for s in sources):
        return out
    report = json.loads((demo / "model" / "train_report.json").read_text())
    cmd = [sys.executable, "-m", "pipeline", "train", "--model", "small", "--catalog", str(catalog), "--out", str(out),
           "--captions", "auto", "--epochs", str(report["epochs"])]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def _measure(checkpoint: Path, held: list[dict[str, Any]], queries: list[dict[str, Any]], heldout: Path) -> dict:
    import numpy as np
    from transformers import CLIPModel, CLIPTokenizer

    from pipeline.config import LimitsSettings
    from pipeline.export import train_eval as ev
    from pipeline.manifest import ImageSpec

    spec = ImageSpec()
    images = np.stack([ev.image_uint8(str(heldout.parent / h["image"]), spec, LimitsSettings()) for h in held])
    model, tokenizer = CLIPModel.from_pretrained(checkpoint), CLIPTokenizer.from_pretrained(checkpoint)
    attrs = [{f: h[f] for f in ("category", "color", "pattern")} for h in held]
    out: dict[str, Any] = {"titles": ev.recall_at_k(model, tokenizer, images, [h["title"] for h in held], spec)}
    for names in GROUPS:
        group = [q for q in queries if "+".join(f for f in ("category", "color", "pattern") if q[f]) == names]
        out[names] = (len(group), ev.phrasing_recall(model, tokenizer, images, attrs, group, spec))
    sims = ev.text_image_similarity(model, tokenizer, images, list(EXAMPLES), spec)
    out["examples"] = {t: [held[i]["title"] for i in np.argsort(-sims[n])[:5]] for n, t in enumerate(EXAMPLES)}
    return out


def run(demo: Path) -> None:
    catalog, heldout = demo / "catalog" / "catalog.jsonl", demo / "catalog" / "heldout.jsonl"
    phrasings = demo / "catalog" / "phrasings_heldout.jsonl"
    if not phrasings.is_file() or not (demo / "model" / "train_report.json").is_file():
        raise SystemExit(f"{demo} has no demo model and catalog with captions: run make demo first")
    held = [json.loads(line) for line in heldout.read_text().splitlines()]
    queries = [json.loads(line) for line in phrasings.read_text().splitlines() if line.strip()]
    models = {"demo model (titles)": demo / "model",
              "with captions (titles, descriptions, captions)": _twin(demo, catalog)}  # fmt: skip
    rows: list[list[object]] = []
    examples: dict[str, dict[str, list[str]]] = {}
    for name, checkpoint in models.items():
        m = _measure(checkpoint, held, queries, heldout)
        t = m["titles"]
        rows.append([name, "held-out titles", len(held), t["recall@1"], t["recall@5"], t["recall@10"], "—"])
        for names, label in GROUPS.items():
            n, r = m[names]
            rows.append([name, label, n, r["phrasing recall@1"], r["phrasing recall@5"], r["phrasing recall@10"],
                         r["phrasing precision@10"]])  # fmt: skip
        examples[name] = m["examples"]
    lines = [f"{len(held)} held-out drawings, {len(queries)} held-out phrasings. Top 5 held-out drawings:"]
    for text in EXAMPLES:
        for name, ex in examples.items():
            lines.append(f'- "{text}" ({name}): {", ".join(ex[text])}')
    show("Held-out text→image retrieval on the demo: shopper phrasings vs the title template",
         ["model", "queries", "n", "recall@1", "recall@5", "recall@10", "precision@10"], rows, "phrasings",
         "\n".join(lines))  # fmt: skip
