"""``python -m bench multilingual``: search in Arabic and English on the demo, with the distilled multilingual
text tower and with the demo CLIP's own text tower.

The demo's held-out drawings (``heldout.jsonl``: 384 drawings never in the catalog, each with its title in
English and Arabic) are embedded by the exported image tower; each title queries all of them (text→image
recall@1/5/10, a hit is a drawing of that title: the ``train`` command's own measure), once per language and per
text tower, all at FP32 through the in-process encoder the service uses. The student was distilled on the
catalog's parallel titles with every 10th title held out (``distill_report.json``); the held-out drawings'
titles include those, reported on their own. Then the held-out shopper phrasings (``phrasings_heldout.jsonl``:
sentence frames no training text used, grouped by what they name; a drawing answers one when it has everything
it names) through each tower: the student was also distilled on the catalog's captions (``paraphrases.jsonl``),
the demo CLIP was trained on titles alone. Saved to bench/results/multilingual.md.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from bench.common import show
from bench.phrasings import GROUPS
from pipeline.export.train_eval import phrasing_scores, read_phrasings


def _recall(queries: np.ndarray, labels: list[str], images: np.ndarray, image_labels: list[str]) -> list[float]:
    sims = queries @ images.T
    order = np.argsort(-sims, axis=1)
    image_labels_arr = np.array(image_labels)
    out = []
    for k in (1, 5, 10):
        hits = [(image_labels_arr[order[q, :k]] == labels[q]).any() for q in range(len(labels))]
        out.append(round(float(np.mean(hits)), 4))
    return out


async def _measure(repository: Path, held: list[dict], image_bytes: list[bytes], not_distilled: set[str],
                   phrasings: list[dict]) -> list[list[object]]:  # fmt: skip
    from pipeline.config import EncoderSettings
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.text_towers import TextTower
    from pipeline.types import Precision

    encoder = OnnxEncoder.load(repository, EncoderSettings(precision=Precision.FP32))
    try:
        if encoder.info.multilingual is None:
            raise SystemExit(f"{repository} has no multilingual text tower: run make demo (or export --text-model)")
        images = await encoder.encode_images(image_bytes)
        labels = [h["title"] for h in held]
        rows: list[list[object]] = []
        unseen = [i for i, h in enumerate(held) if h["title"] in not_distilled]
        for language, field in (("English", "title"), ("Arabic", "title_ar")):
            queries = [h[field] for h in held]  # one query per held-out drawing, as train measures
            for tower, name in ((TextTower.CLIP, "the demo CLIP's text tower"),
                                (TextTower.MULTILINGUAL, "the distilled student")):  # fmt: skip
                vectors = await encoder.encode_texts(queries, tower)
                rows.append([f"{language}, {name}", len(queries), *_recall(vectors, labels, images, labels), "—"])
                if tower == TextTower.MULTILINGUAL and unseen:
                    sub = _recall(vectors[unseen], [labels[i] for i in unseen], images, labels)
                    rows.append([f"{language}, the student, titles it was not distilled on", len(unseen), *sub, "—"])
        # shopper phrasings in frames no training text used: a drawing answers when it has what the query names
        attrs = [{f: h[f] for f in ("category", "color", "pattern")} for h in held]
        for tower, name in ((TextTower.CLIP, "the demo CLIP's text tower"), (TextTower.MULTILINGUAL, "the student")):
            for names, label in GROUPS.items():
                group = [q for q in phrasings if "+".join(f for f in ("category", "color", "pattern") if q[f]) == names]
                if group:
                    vectors = await encoder.encode_texts([q["text"] for q in group], tower)
                    r = phrasing_scores(vectors @ images.T, attrs, group)
                    figures = [r[f"phrasing {m}"] for m in ("recall@1", "recall@5", "recall@10", "precision@10")]
                    rows.append([f"English {label}, {name}", len(group), *figures])
        return rows
    finally:
        await encoder.aclose()


def run(demo: Path) -> None:
    repository, heldout = demo / "model_repository", demo / "catalog" / "heldout.jsonl"
    held = [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()]
    report = demo / "text_student" / "distill_report.json"
    distilled = json.loads(report.read_text()) if report.is_file() else {}
    not_distilled = set(distilled.get("heldout_sources", []))  # what train --distill-text held out, with its pairs
    image_bytes = [(heldout.parent / h["image"]).read_bytes() for h in held]
    phrasings_file = demo / "catalog" / "phrasings_heldout.jsonl"
    phrasings = read_phrasings(phrasings_file) if phrasings_file.is_file() else []
    rows = asyncio.run(_measure(repository, held, image_bytes, not_distilled, phrasings))
    by_name = {str(r[0]): r for r in rows}
    english = by_name["English, the distilled student"][4]
    arabic = by_name["Arabic, the distilled student"][4]
    ratio = f"{arabic / english:.3f}" if isinstance(english, float) and isinstance(arabic, float) and english else "n/a"
    notes = (f"{len(held)} held-out drawings; "
             f"student distilled on {distilled.get('pairs', '?')} pairs of titles with their translations or "
             f"captions ({distilled.get('heldout', '?')} held out, every 10th title with its pairs; "
             f"cosine to the teacher on those {distilled.get('cosine', '?')}). Arabic recall@10 / "
             f"English recall@10 with the student: {ratio} (target ≥ 0.9).")  # fmt: skip
    show("Held-out text→image recall on the demo, by query language and text tower (FP32, in-process)",
         ["queries", "n", "recall@1", "recall@5", "recall@10", "precision@10"], rows, "multilingual",
         notes)  # fmt: skip
