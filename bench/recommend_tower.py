"""``python -m bench recommend-tower``: does a learned buyer tower beat the weighted mean?

The tower: each of a buyer's last 50 events becomes a token (the product's image and text vectors, the event
type, log(1 + days before the buyer's latest event)); two pre-norm self-attention blocks over the sequence;
attention pooling; the buyer vector in each space is a linear map of the pooled state plus the
attention-weighted mean of the input product vectors (so the tower starts from a learned weighted mean and
learns corrections), L2-normalised. Trained with InfoNCE: the fused cosine (mean of the two spaces, as the
service ranks) over every catalog product, divided by a learned temperature, the products the buyer had
already bought masked out (the service excludes them), against the products bought in the next session.

Training data: simulated shoppers (``pipeline.recommend.simulate``) with another seed than the evaluation's,
every purchase session of each one an example (the events before it as the history); a tenth of the shoppers
held out to pick the epoch by recall@10. Exported to ONNX (``torch.onnx.export``, dynamo) and evaluated
through onnxruntime on the evaluation's protocol and shoppers (``pipeline.recommend.evaluate``): the tower's
vectors replace the weighted mean in the service's own retrieval (``RecommendService._recommend``: same
index, fusion, exclusions). Saved to bench/results/recommend_tower.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, show

MAX_LEN = 50
KINDS = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}


@dataclass
class Example:
    products: list[int]  # history, newest first, at most MAX_LEN (indices into the catalog)
    kinds: list[int]
    ages: list[float]  # log1p(days before the newest history event)
    targets: list[int]
    bought: list[int]  # bought before: masked out of the scores


def features(history: Sequence[Any], index: Callable[[str], int | None]) -> tuple[list[int], list[int], list[float]]:
    """Tokens of a history (newest first): catalog indices, event kinds, log ages; unknown products skipped."""
    products, kinds, stamps = [], [], []
    for e in history:
        i = index(e.product_id)
        if i is None:
            continue
        products.append(i)
        kinds.append(KINDS[str(e.type)])
        stamps.append(e.ts)
        if len(products) == MAX_LEN:
            break
    newest = max(stamps) if stamps else None
    ages = [math.log1p((newest - t).total_seconds() / 86400) for t in stamps] if newest else []
    return products, kinds, ages


def examples(events: Sequence[Any], row: dict[str, int], gap_s: float = 1800.0) -> list[Example]:
    """Every purchase session of every buyer: the events before it → the products bought in it."""
    from pipeline.recommend.events import EventType

    by_buyer: dict[str, list[Any]] = {}
    for e in events:
        by_buyer.setdefault(e.buyer_id, []).append(e)
    out = []
    for evs in by_buyer.values():
        evs.sort(key=lambda e: e.ts)
        starts = [i for i in range(len(evs)) if i == 0 or (evs[i].ts - evs[i - 1].ts).total_seconds() > gap_s]
        for s, end in zip(starts, [*starts[1:], len(evs)], strict=True):
            if s == 0:
                continue
            before = {e.product_id for e in evs[:s] if e.type is EventType.PURCHASE}
            targets = {e.product_id for e in evs[s:end] if e.type is EventType.PURCHASE} - before
            if not targets:
                continue
            products, kinds, ages = features(evs[:s][::-1], row.get)
            out.append(Example(products, kinds, ages, [row[p] for p in targets], [row[p] for p in before]))
    return out


def _batch(batch: Sequence[Example], vectors: np.ndarray) -> tuple[np.ndarray, ...]:
    n, length = len(batch), max(1, max(len(e.products) for e in batch))
    vec = np.zeros((n, length, vectors.shape[1]), np.float32)
    kind = np.zeros((n, length), np.int64)
    age = np.zeros((n, length), np.float32)
    mask = np.zeros((n, length), np.float32)
    for b, e in enumerate(batch):
        k = len(e.products)
        vec[b, :k], kind[b, :k], age[b, :k], mask[b, :k] = vectors[e.products], e.kinds, e.ages, 1.0
    return vec, kind, age, mask


def build_model(dim: int, width: int = 128, heads: int = 4, blocks: int = 2) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            self.drop = nn.Dropout(0.1)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(width // heads)
            scores = scores + (mask[:, None, None, :] - 1.0) * 1e9
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, width)
            x = x + self.drop(self.proj(attended))
            return x + self.drop(self.ff(self.norm2(x)))

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(2 * dim, width)
            self.kind = nn.Embedding(len(KINDS), width)
            self.age = nn.Linear(1, width)
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.norm = nn.LayerNorm(width)
            self.pool = nn.Linear(width, 1)
            self.out = nn.Linear(width, 2 * dim)
            nn.init.zeros_(self.out.weight)  # start as the attention-weighted mean of the inputs (uniform at first)
            nn.init.zeros_(self.out.bias)
            self.log_temp = nn.Parameter(torch.tensor(math.log(0.05)))

        def forward(
            self, vectors: torch.Tensor, kinds: torch.Tensor, ages: torch.Tensor, mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.embed(vectors) + self.kind(kinds) + self.age(ages.unsqueeze(-1))
            for block in self.blocks:
                x = block(x, mask)
            h = self.norm(x)
            weights = (self.pool(h).squeeze(-1) + (mask - 1.0) * 1e9).softmax(-1).unsqueeze(-1)
            out = self.out((weights * h).sum(1)) + (weights * vectors).sum(1)
            image, text = out[:, :dim], out[:, dim:]
            return nn.functional.normalize(image, dim=-1), nn.functional.normalize(text, dim=-1)

    return Tower()


def _scores(model: Any, batch: Sequence[Example], vectors: np.ndarray, dim: int) -> tuple[Any, Any, Any]:
    """Cosines of every catalog product in the image space, the text space, and fused (their mean, as the
    service ranks), the buyer's earlier purchases pushed to the bottom."""
    import torch

    vec, kind, age, mask = (torch.from_numpy(a) for a in _batch(batch, vectors))
    image, text = model(vec, kind, age, mask)
    catalog = torch.from_numpy(vectors)
    by_image, by_text = image @ catalog[:, :dim].T, text @ catalog[:, dim:].T
    bought = torch.zeros_like(by_image, dtype=torch.bool)
    for b, e in enumerate(batch):
        bought[b, e.bought] = True
    # finite: -inf would make the temperature's gradient NaN (inf * 0)
    return tuple(s.masked_fill(bought, -1e4) for s in (0.5 * (by_image + by_text), by_image, by_text))


def _recall(model: Any, data: Sequence[Example], vectors: np.ndarray, dim: int, k: int = 10) -> float:
    import torch

    model.eval()
    hits = 0.0
    with torch.no_grad():
        for s in range(0, len(data), 512):
            batch = data[s : s + 512]
            top = _scores(model, batch, vectors, dim)[0].topk(k, dim=-1).indices.numpy()
            hits += sum(len(set(t.tolist()) & set(e.targets)) / len(e.targets) for t, e in zip(top, batch, strict=True))
    return hits / max(1, len(data))


def mean_recall(data: Sequence[Example], vectors: np.ndarray, dim: int, k: int = 10) -> float:
    """Recall@k of the configured weighted mean (``RecommendSettings`` weights and half-life) on the same examples
    and the same exact scoring as the tower's held-out figure: the reference that figure is read against."""
    from pipeline.config import RecommendSettings

    s = RecommendSettings()
    weight = {KINDS[t]: s.weights.get(t, 0.0) for t in KINDS}
    hits = 0.0
    for e in data:
        days = np.expm1(np.array(e.ages))
        w = np.array([weight[kd] for kd in e.kinds]) * (0.5 ** (days / s.half_life_days) if s.half_life_days else 1.0)
        buyer = w @ vectors[e.products]
        image, text = buyer[:dim] / np.linalg.norm(buyer[:dim]), buyer[dim:] / np.linalg.norm(buyer[dim:])
        scores = 0.5 * (vectors[:, :dim] @ image + vectors[:, dim:] @ text)
        scores[e.bought] = -1e4
        top = np.argpartition(-scores, k)[:k]
        hits += len(set(top.tolist()) & set(e.targets)) / len(e.targets)
    return hits / max(1, len(data))


def train(
    data: list[Example], vectors: np.ndarray, dim: int, epochs: int, seed: int, log: Callable[[str], None]
) -> tuple[Any, list[str]]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    held = max(1, len(data) // 10)
    val, fit = [data[i] for i in order[:held]], [data[i] for i in order[held:]]
    model = build_model(dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    best, best_state = -1.0, None
    history = [f"the weighted mean's held-out recall@10 {mean_recall(val, vectors, dim):.4f}"]
    log(history[0])
    for epoch in range(epochs):
        model.train()
        perm, total, t = rng.permutation(len(fit)), 0.0, time.perf_counter()
        for s in range(0, len(fit), 256):
            batch = [fit[i] for i in perm[s : s + 256]]
            # InfoNCE on the fused score, plus each space alone: the service retrieves the top of each space
            # and fuses those, so a vector must rank its targets high in each space, not only in the mean.
            loss = torch.zeros(())
            for part, share in zip(_scores(model, batch, vectors, dim), (1.0, 0.5, 0.5), strict=True):
                logp = (part / model.log_temp.exp()).log_softmax(-1)
                loss = loss - share * torch.stack([logp[b, e.targets].mean() for b, e in enumerate(batch)]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        recall = _recall(model, val, vectors, dim)
        took = time.perf_counter() - t
        line = f"epoch {epoch + 1}: loss {total / len(fit):.3f}, held-out recall@10 {recall:.4f} ({took:.0f} s)"
        log(line)
        history.append(line)
        if recall > best:
            best, best_state = recall, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, history


def export(model: Any, dim: int, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    sample = (torch.zeros(2, 7, 2 * dim), torch.zeros(2, 7, dtype=torch.int64), torch.zeros(2, 7), torch.ones(2, 7))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=10_000)
    torch.onnx.export(
        model, sample, str(path), dynamo=True, external_data=False,
        input_names=["vectors", "kinds", "ages", "mask"], output_names=["image", "text"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}, {0: batch, 1: length}, {0: batch, 1: length}),
    )  # fmt: skip
    return path


def tower_ranker(session: Any, dim: int, k: int) -> Callable[[Any], Any]:
    """A ranker factory for ``pipeline.recommend.evaluate``: the tower's vectors through the service's retrieval."""
    from pipeline.recommend.models import Exclude
    from pipeline.types import Modality

    def factory(service: Any) -> Callable[[Any], Any]:
        async def rank(case: Any) -> list[str]:
            base = await service.encode(case.history)
            if base is None:  # nothing usable: the service's popular fallback
                out = await service.for_session(case.history, k, None, Exclude.PURCHASED, False)
                return [h.id for h in out.hits]
            ids = list(base.points)
            row = {pid: i for i, pid in enumerate(ids)}
            table = np.stack([np.concatenate([base.points[p][Modality.IMAGE], base.points[p][Modality.TEXT]])
                              for p in ids]).astype(np.float32)  # fmt: skip
            products, kinds, ages = features(case.history, row.get)
            vec = table[products][None]
            inputs = {"vectors": vec, "kinds": np.array([kinds], np.int64), "ages": np.array([ages], np.float32),
                      "mask": np.ones((1, len(products)), np.float32)}  # fmt: skip
            image, text = session.run(None, inputs)
            buyer = replace(base, spaces={Modality.IMAGE: image[0], Modality.TEXT: text[0]}, _history=None)
            excluded = await service._excluded(None, case.history, Exclude.PURCHASED)
            out = await service._recommend(buyer, excluded, k, None, False)
            return [h.id for h in out.hits]

        return rank

    return factory


def run(
    demo: Path, train_shoppers: int, eval_shoppers: int, epochs: int, train_seed: int = 3, eval_seed: int = 1
) -> None:
    import onnxruntime as ort
    import torch

    from pipeline.config import Settings
    from pipeline.recommend.evaluate import evaluate_simulated
    from pipeline.recommend.simulate import ShopperConfig, simulate, stack_items
    from pipeline.stack import open_stack
    from pipeline.types import Modality

    torch.set_num_threads(os.cpu_count() or 1)
    settings = Settings()
    settings.encoder.model_repository = demo / "model_repository"
    settings.qdrant.path, settings.mongo.data_dir = demo / "qdrant", demo / "mongo"
    load, start = os.getloadavg()[0], time.perf_counter()

    async def work() -> tuple[Any, list[str], int, int, float]:
        async with open_stack(settings) as stack:
            items = await stack_items(stack)
            ids = [i.id for i in items]
            points = await stack.recommend.points(ids)
            dim = stack.encoder.info.dim
            vectors = np.stack([np.concatenate([points[p][Modality.IMAGE], points[p][Modality.TEXT]]) for p in ids])
            events = simulate(items, ShopperConfig(shoppers=train_shoppers), train_seed, dt.datetime.now(dt.UTC))
            data = examples(events, {p: i for i, p in enumerate(ids)})
            t = time.perf_counter()
            model, history = train(data, vectors.astype(np.float32), dim, epochs, train_seed, print)
            train_s = time.perf_counter() - t
            path = export(model, dim, CACHE / "buyer_tower" / "buyer_tower.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            tower = ("buyer tower (attention, InfoNCE; ONNX)", tower_ranker(session, dim, 10))
            report = await evaluate_simulated(stack, eval_shoppers, eval_seed, extra=[tower])
            return report, history, len(data), path.stat().st_size, train_s

    report, history, n_examples, size, train_s = asyncio.run(work())
    headers, rows = report.table()
    show(
        f"Recommendations: learned buyer tower vs the weighted mean, {report.source}, demo catalog",
        headers,
        rows,
        "recommend_tower",
        f"{report.summary()}. Tower trained on {train_shoppers:,} other simulated shoppers (seed {train_seed}): "
        f"{n_examples:,} purchase sessions, {epochs} epochs ({train_s:.0f} s on {os.cpu_count()} cores), the epoch "
        f"kept by held-out recall@10; ONNX {size / 1024:.0f} KB. Training: " + "; ".join(history) + ". "
        f"{time.perf_counter() - start:.0f} s in all, load average {load:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after. Reproduce: `.venv/bin/python -m bench recommend-tower --train-shoppers {train_shoppers} "
        f"--shoppers {eval_shoppers} --epochs {epochs}`.",
    )
