"""Does the demo answer like a shop should? Text queries over the demo catalog, precision@10 per query.

A hit is a product whose title is exactly the query's combination (colour, pattern, category); "same colour"
and "same category" columns show how the misses fail. Run after ``make demo`` (it reads data/demo/).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import show

QUERIES = ["blue striped t-shirt", "red mug", "black dotted sneaker", "yellow checked cap", "pink vase",
           "green striped tote bag", "white dotted mug", "orange checked t-shirt"]  # fmt: skip


async def _run(demo: Path) -> list[list[str]]:
    from pipeline.config import Settings
    from pipeline.stack import open_stack

    settings = Settings(encoder={"model_repository": demo / "model_repository"}, qdrant={"path": demo / "qdrant"},
                        mongo={"data_dir": demo / "mongo"})  # fmt: skip
    rows = []
    async with open_stack(settings) as stack:
        for q in QUERIES:
            hits = (await stack.search.search_text(q, top_k=10)).hits
            words = q.split()
            exact = sum(h.product and h.product.name.lower() == q for h in hits)
            color = sum(h.product and h.product.color == words[0] for h in hits)
            category = sum(h.product and h.product.category == " ".join(words[-2:] if q.endswith("tote bag") else
                                                                           words[-1:]) for h in hits)  # fmt: skip
            rows.append([q, f"{exact}/10", f"{color}/10", f"{category}/10", hits[0].product.name if hits else ""])
    return rows


def run(demo: Path = Path("data/demo")) -> None:
    rows = asyncio.run(_run(demo))
    show(
        "Demo model: text queries over the drawn catalog, top 10",
        ["query", "exact match", "same colour", "same category", "first result"],
        rows,
        "demo_queries",
    )
