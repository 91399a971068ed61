"""``python -m bench recommend-eval``: the offline evaluation of recommendations on the demo catalog.

Simulated shoppers (``pipeline.recommend.simulate``) over the demo model and index that ``make demo`` built;
the protocol and the methods are those of ``python -m pipeline recommend-eval`` (``pipeline.recommend.evaluate``):
each shopper's last purchase held out with the rest of its session, recall@10 and NDCG@10 of the buyer vector
as configured, without event weights and without recency, popularity and random (and, with ``--sweep``, other
half-lives and weightings). Saved to bench/results/recommend_eval.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from bench.common import show


def run(demo: Path, shoppers: int, seed: int, sweep: bool) -> None:
    from pipeline.config import Settings
    from pipeline.recommend.evaluate import EvalReport, evaluate_simulated
    from pipeline.stack import open_stack

    settings = Settings()
    settings.encoder.model_repository = demo / "model_repository"
    settings.qdrant.path, settings.mongo.data_dir = demo / "qdrant", demo / "mongo"

    async def work() -> EvalReport:
        async with open_stack(settings) as stack:
            return await evaluate_simulated(stack, shoppers, seed, sweep=sweep)

    load, start = os.getloadavg()[0], time.perf_counter()
    report = asyncio.run(work())
    headers, rows = report.table()
    line = f".venv/bin/python -m bench recommend-eval --shoppers {shoppers} --seed {seed}" + (
        " --sweep" if sweep else ""
    )
    show(
        f"Recommendations, offline: recall@{report.k} and NDCG@{report.k} on {report.source}, demo catalog",
        headers,
        rows,
        "recommend_eval" + ("_sweep" if sweep else ""),
        f"{report.summary()}. Means over the evaluated buyers with 95% confidence intervals; Δ: the paired "
        f"difference from the first row, buyer by buyer. {time.perf_counter() - start:.0f} s, load average "
        f"{load:.1f} before, {os.getloadavg()[0]:.1f} after. Reproduce: `{line}` (or `python -m pipeline "
        f"recommend-eval --shoppers {shoppers} --seed {seed}`).",
    )
