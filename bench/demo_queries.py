"""Does the demo answer like a shop should? Precision@10 per fusion method, over the demo model and catalog.

One row per fusion method (``PIPELINE__SEARCH__FUSION``), same model, same index, same queries:

- the eight README queries ("blue striped t-shirt", "red mug", ...);
- every exact colour + pattern + category title as a text query (8 x 3 x 6 = 144, "green dotted mug");
- every plain colour + category title (48, "red mug");
- "more like this" from one product of each combination (192);
- the 384 held-out drawings as photo queries (photo queries search one space, so every fusion must give the
  same figure: a check, not a contest).

A hit is a product whose title is exactly the query's (for a photo or a product: the same combination). Also
shown: the top ten of "green dotted mug" as categories, and whether every answer is in non-increasing order of
the score it shows. Run after ``make demo`` (it reads data/demo/: the model, the ingested index, the catalog).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import show
from pipeline.export.train_eval import answers, read_phrasings

QUERIES = ["blue striped t-shirt", "red mug", "black dotted sneaker", "yellow checked cap", "pink vase",
           "green striped tote bag", "white dotted mug", "orange checked t-shirt"]  # fmt: skip
METHODS = ("weighted", "dbsf", "rrf")
EXAMPLE = "green dotted mug"
HEADERS = ["fusion", "README 8", "colour+pattern+category", "colour+category", "more like this", "held-out photos",
           "shopper phrasings", "ordered"]  # fmt: skip
PHRASES = ("a mug for my morning coffee", "something red for running", "do you have a blue cup?")


def _titles() -> tuple[list[str], list[str]]:
    from pipeline.demo_catalog import COLORS, PATTERNS, SHAPES, title

    exact = [title(c, p, cat) for cat in SHAPES for c in COLORS for p in PATTERNS if p != "plain"]
    plain = [title(c, "plain", cat) for cat in SHAPES for c in COLORS]
    return exact, plain


def _precision(names: Sequence[str | None], want: str) -> float:
    return sum(n == want for n in names) / 10


def _names(response: Any) -> list[str | None]:
    return [h.product.name.lower() if h.product else None for h in response.hits]


def _answers(response: Any, query: dict[str, Any]) -> float:
    """Precision@10 of a held-out phrasing: the share of the top 10 with everything the query names."""

    def attrs(p: Any) -> dict[str, Any]:
        return {"category": p.category, "color": p.color, "pattern": p.attributes.get("pattern")}

    return sum(1 for h in response.hits if h.product is not None and answers(query, attrs(h.product))) / 10


def _ordered(response: Any) -> bool:
    scores = [h.score for h in response.hits]
    return scores == sorted(scores, reverse=True)


async def _method(stack: Any, method: str, catalog: Path) -> tuple[list[str], dict[str, Any]]:
    from pipeline.search import SearchService

    settings = stack.settings
    search = SearchService(stack.encoder, stack.index, stack.mongo, stack.cache, stack.events,
                           settings.search.model_copy(update={"fusion": method}), settings.limits,
                           settings.qdrant.overfetch)  # fmt: skip
    exact, plain = _titles()
    ordered = True

    async def text_p10(queries: Sequence[str]) -> float:
        nonlocal ordered
        total = 0.0
        for q in queries:
            response = await search.search_text(q, top_k=10)
            ordered &= _ordered(response)
            total += _precision(_names(response), q)
        return total / len(queries)

    rows = [json.loads(line) for line in (catalog / "catalog.jsonl").read_text().splitlines()]
    firsts = [r for r in rows if r["id"].endswith("-00")]
    product_total = 0.0
    for r in firsts:
        response = await search.search_product(r["id"], top_k=10)
        ordered &= _ordered(response)
        product_total += _precision(_names(response), r["name"].lower())
    heldout = [json.loads(line) for line in (catalog / "heldout.jsonl").read_text().splitlines()]
    photo_total = 0.0
    for h in heldout:
        response = await search.search_image((catalog / h["image"]).read_bytes(), top_k=10)
        ordered &= _ordered(response)
        photo_total += _precision(_names(response), h["title"])
    phrasings = read_phrasings(catalog / "phrasings_heldout.jsonl")
    phrasing_total = 0.0
    for q in phrasings:
        response = await search.search_text(q["text"], top_k=10)
        ordered &= _ordered(response)
        phrasing_total += _answers(response, q)
    example = await search.search_text(EXAMPLE, top_k=10)
    phrases = {}
    for text in PHRASES:
        hits = (await search.search_text(text, top_k=10)).hits
        phrases[text] = ", ".join(f"{h.product.color} {h.product.category}" if h.product else "?" for h in hits)
    row = [
        method + (" (default)" if method == settings.search.fusion else ""),
        f"{await text_p10(QUERIES):.3f}",
        f"{await text_p10(exact):.3f}",
        f"{await text_p10(plain):.3f}",
        f"{product_total / len(firsts):.3f}",
        f"{photo_total / len(heldout):.3f}",
        f"{phrasing_total / len(phrasings):.3f}",
        "yes" if ordered else "NO",
    ]
    detail = {
        "example": " ".join((h.product.category or "?").replace(" ", "-") if h.product else "?" for h in example.hits),
        "example_scores": " ".join(f"{h.score:.3f}" for h in example.hits),
        "example_exact": _precision(_names(example), EXAMPLE),
        "counts": (len(QUERIES), len(exact), len(plain), len(firsts), len(heldout), len(phrasings)),
        "phrases": phrases,
    }
    return row, detail


async def _run(demo: Path, methods: Sequence[str]) -> tuple[list[list[str]], dict[str, dict[str, Any]]]:
    """Every fusion method with the default text tower; then, when the model has a multilingual tower, the default
    method with that tower embedding every query (as ``make demo`` serves)."""
    from pipeline.config import Settings
    from pipeline.manifest import load_manifest
    from pipeline.stack import open_stack

    towers = ["auto"] + (["multilingual"] if load_manifest(demo / "model_repository").multilingual else [])
    rows, details = [], {}
    for tower in towers:
        settings = Settings(encoder={"model_repository": demo / "model_repository", "text_tower": tower},
                            qdrant={"path": demo / "qdrant"}, mongo={"data_dir": demo / "mongo"})  # fmt: skip
        async with open_stack(settings) as stack:
            for method in methods if tower == "auto" else [settings.search.fusion]:
                row, detail = await _method(stack, method, demo / "catalog")
                row[0] += f", text tower {tower}"
                details[row[0]] = detail
                rows.append(row)
    return rows, details


def run(demo: Path = Path("data/demo"), methods: Sequence[str] = METHODS) -> None:
    rows, details = asyncio.run(_run(demo, methods))
    n = next(iter(details.values()))["counts"]
    notes = [
        f"Precision@10 (a hit: exactly the title asked for, or for a product or a photo the same colour + pattern + "
        f"category), averaged over the queries of each column: {n[0]} README queries, {n[1]} exact colour + "
        f'pattern + category titles, {n[2]} plain colour + category titles, "more like this" from {n[3]} '
        f"products (one per combination), {n[4]} held-out drawings as photo queries (one space searched: no fusion "
        f"happens, the column checks that), {n[5]} held-out shopper phrasings (phrasings_heldout.jsonl: sentence "
        f"frames no training text used; a hit has the category, and the colour and pattern where the query names "
        f'them). "Ordered": every answer in non-increasing order of its shown score. Text tower auto: English '
        f"queries by the demo CLIP's text tower; multilingual: every query by the student distilled on the "
        f"translations and the captions (what make demo serves).",
        "",
        f'Top 10 of "{EXAMPLE}" by category (exact-title hits / 10; shown scores):',
    ]
    for method, d in details.items():
        notes.append(f"- {method}: {d['example']} ({d['example_exact']:.1f}; {d['example_scores']})")
    for text in PHRASES:
        notes.append(f'Top 10 of "{text}":')
        notes += [f"- {method}: {d['phrases'][text]}" for method, d in details.items() if "weighted" in method]
    show(
        "Demo model: precision@10 per fusion method (same model, same index, same queries)",
        HEADERS,
        rows,
        "demo_queries",
        "\n".join(notes),
    )
