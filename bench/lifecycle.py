"""``python -m bench lifecycle``: do shoppers' clicks improve the demo model? The model lifecycle on the demo.

The demo catalog and model that ``make demo`` builds (built here when absent) are ingested into a scratch data
folder; simulated shoppers type each held-out drawing's title (``heldout.jsonl``: drawings never in the
catalog) and click the first result that is what they asked for (the same name); results shown above it are
skipped. Then two training jobs from the same demo model, same epochs, same seed, same learning rate: the
catalog's pairs alone, and the catalog's pairs plus the mined click pairs (skipped results as hard negatives).
Each is measured on the held-out drawings (text→image recall@1/5/10, the ``train`` command's own measure),
and the clicks model goes through activation (shadow build, validation against the active model, switch).
Saved to bench/results/lifecycle.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import show

PY = sys.executable


def _demo(demo: Path) -> None:
    """The demo catalog and model, as make demo builds them (kept for the next run)."""
    if not (demo / "catalog" / "catalog.jsonl").is_file():
        subprocess.run([PY, "-m", "pipeline", "demo-catalog", str(demo / "catalog")], check=True)
    if not (demo / "model" / "model.safetensors").is_file():
        subprocess.run([PY, "-m", "pipeline", "train", "--model", "small", "--catalog",
                        str(demo / "catalog" / "catalog.jsonl"), "--out", str(demo / "model")], check=True)  # fmt: skip


def _heldout_recall(checkpoint: Path, heldout: Path) -> dict[str, float]:
    import numpy as np
    from transformers import CLIPModel, CLIPTokenizer

    from pipeline.config import LimitsSettings
    from pipeline.export.train_eval import image_uint8, recall_at_k
    from pipeline.manifest import ImageSpec

    held = [json.loads(line) for line in heldout.read_text().splitlines()]
    spec = ImageSpec()
    images = np.stack([image_uint8(str(heldout.parent / h["image"]), spec, LimitsSettings()) for h in held])
    model = CLIPModel.from_pretrained(checkpoint)
    return recall_at_k(model, CLIPTokenizer.from_pretrained(checkpoint), images, [h["title"] for h in held], spec)


async def _loop(demo: Path, root: Path, epochs: int, lr: float) -> dict[str, Any]:
    from pipeline.config import Settings
    from pipeline.jobs.model import JobKind
    from pipeline.jobs.runner import run_foreground
    from pipeline.recommend.events import EventType, ShopperEvent
    from pipeline.stack import open_stack

    settings = Settings()
    settings.encoder.model_repository = root / "model_repository"
    settings.encoder.precision = "fp32"  # type: ignore[assignment]
    settings.qdrant.path, settings.mongo.data_dir = root / "qdrant", root / "mongo"
    out: dict[str, Any] = {}
    async with open_stack(settings) as stack:
        start = time.perf_counter()
        report = await stack.ingest.ingest(demo / "catalog" / "catalog.jsonl")
        out["ingest_s"], out["products"] = time.perf_counter() - start, report.added
        held = [json.loads(line) for line in (demo / "catalog" / "heldout.jsonl").read_text().splitlines()]
        clicks = shown_none = 0
        for h in held:  # a shopper per held-out drawing: its title typed, the first matching result clicked
            answer = await stack.search.search_text(h["title"], top_k=12)
            hit = next((x for x in answer.hits if x.product and x.product.name.lower() == h["title"]), None)
            if hit is None:
                shown_none += 1
                continue
            event = ShopperEvent(product_id=hit.product_id, type=EventType.CLICK, query_id=answer.query_id)
            clicks += (await stack.recommend.record([event])).accepted
        out["queries"], out["clicks"], out["no_match_shown"] = len(held), clicks, shown_none
        await asyncio.sleep(2.0)  # the query log reaches MongoDB in the background (every 0.1 s)
        for name, params in (("catalog only", {"clicks": False}), ("catalog + clicks", {"clicks": True})):
            start = time.perf_counter()
            job = await run_foreground(stack, stack.jobs, JobKind.TRAIN, {**params, "epochs": epochs, "lr": lr})
            assert job.state == "succeeded", job.message
            out[name] = {"version": job.result["version"], "pairs": job.result["pairs"],
                         "seconds": time.perf_counter() - start}  # fmt: skip
        start = time.perf_counter()
        job = await run_foreground(stack, stack.jobs, JobKind.ACTIVATE,
                                   {"version": out["catalog + clicks"]["version"], "force": True})  # fmt: skip
        assert job.state == "succeeded", job.message
        out["activation"], out["activation_s"] = job.result, time.perf_counter() - start
        for v in await stack.registry.list():
            out.setdefault("checkpoints", {})[v.version] = v.checkpoint
    return out


def run(demo: Path, epochs: int, lr: float) -> None:
    load, begin = os.getloadavg()[0], time.perf_counter()
    _demo(demo)
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as tmp:
        root = Path(tmp)
        subprocess.run([PY, "-m", "pipeline", "export", "--model", str(demo / "model"), "--out",
                        str(root / "model_repository"), "--precision", "fp32"], check=True,
                       capture_output=True)  # fmt: skip
        out = asyncio.run(_loop(demo, root, epochs, lr))
        heldout = demo / "catalog" / "heldout.jsonl"
        rows = [["demo model (before)", "—", "—", *_fmt(_heldout_recall(demo / "model", heldout)), "—"]]
        for name in ("catalog only", "catalog + clicks"):
            r = out[name]
            figures = _heldout_recall(Path(out["checkpoints"][r["version"]]), heldout)
            rows.append([name, r["pairs"]["catalog"], r["pairs"]["clicks"], *_fmt(figures), f"{r['seconds']:.0f}"])
    valid = out["activation"].get("validation", {})
    cand, act = valid.get("all", {}).get("candidate", {}), valid.get("all", {}).get("active", {})
    show(
        "Model lifecycle on the demo: do shoppers' clicks improve the model? (held-out drawings, text→image)",
        ["training", "catalog pairs", "click pairs", "recall@1", "recall@5", "recall@10", "train + export s"],
        rows,
        "lifecycle",
        f"{out['products']} products ingested in {out['ingest_s']:.0f} s; {out['queries']} simulated shoppers typed a "
        f"held-out drawing's title and clicked the first result with that name ({out['clicks']} clicks; "
        f"{out['no_match_shown']} saw none in their top 12). Both runs: {epochs} epochs from the demo model, "
        f"lr {lr:g}, seed 0, 1 product in 10 held out of training for validation. Activation of the clicks model "
        f"(shadow build, validation, switch) {out['activation_s']:.0f} s; its validation on held-out catalog titles "
        f"and held-out clicks: candidate MRR {cand.get('mrr', float('nan')):.3f} vs active "
        f"{act.get('mrr', float('nan')):.3f}, recall@10 {cand.get('recall@10', float('nan')):.3f} vs "
        f"{act.get('recall@10', float('nan')):.3f}. {time.perf_counter() - begin:.0f} s in all, load average "
        f"{load:.1f} before, {os.getloadavg()[0]:.1f} after. Reproduce: `.venv/bin/python -m bench lifecycle "
        f"--epochs {epochs} --lr {lr:g}`.",
    )


def _fmt(figures: dict[str, float]) -> list[str]:
    return [f"{figures[f'recall@{k}']:.3f}" for k in (1, 5, 10)]
