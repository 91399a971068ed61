"""Command line: ``python -m pipeline <command>``. Every PipelineError becomes one line on stderr and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.catalog import count_rows
from pipeline.cli_common import (
    JsonOption,
    RepoOption,
    app,
    dispatch,
    err,
    guarded,
    read_image_file,
    run_with_stack,
    settings_for,
)
from pipeline.errors import InvalidInput

# --- the search pipeline ------------------------------------------------------------------------------------


@app.command()
@guarded
def ingest(
    catalog: Annotated[Path, typer.Argument(help="Catalog file: .jsonl or .csv")],
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate, store and embed a catalog. Unchanged rows cost nothing; bad rows are listed and skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    settings = settings_for(model_repository)
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task("ingest", total=count_rows(catalog))

        def advance(n: int) -> None:
            progress.advance(task, n)

        async def work(stack: Any) -> Any:
            return await stack.ingest.ingest(catalog, progress=advance)

        report = dispatch(
            settings,
            work,
            lambda c: c.ingest(catalog, settings.ingest.batch_size, advance, settings.ingest.strict_fields),
        )
    summary = {
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": [{"line": line, "reason": reason} for line, reason in report.rejected],
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    rate = (report.added + report.updated) / report.seconds if report.seconds else 0.0
    err.print(
        f"[green]ingested[/green] {catalog}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected in {report.seconds:.1f} s "
        f"({rate:.1f} products/s embedded)"
    )
    for line, reason in report.rejected[:50]:
        err.print(f"  line {line}: {reason}", soft_wrap=True, markup=False)
    if len(report.rejected) > 50:
        err.print(f"  … and {len(report.rejected) - 50} more (use --json for all)")


@app.command()
@guarded
def search(
    text: Annotated[str | None, typer.Option(help="Search with words")] = None,
    image: Annotated[Path | None, typer.Option(help="Search with a photo")] = None,
    product_id: Annotated[str | None, typer.Option(help="More like this product")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many products")] = 10,
    category: Annotated[str | None, typer.Option()] = None,
    brand: Annotated[str | None, typer.Option()] = None,
    color: Annotated[str | None, typer.Option()] = None,
    min_price: Annotated[float | None, typer.Option(min=0)] = None,
    max_price: Annotated[float | None, typer.Option(min=0)] = None,
    min_score: Annotated[float | None, typer.Option(help="Minimum cosine similarity of a match")] = None,
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ranked products, one per product, with score and metadata."""
    from pipeline.schemas import SearchFilters

    if sum(x is not None for x in (text, image, product_id)) != 1:
        raise InvalidInput("give exactly one of --text, --image or --product-id")
    settings = settings_for(model_repository)
    filters = SearchFilters(category=category, brand=brand, color=color, min_price=min_price, max_price=max_price)
    data = read_image_file(image, settings) if image is not None else None

    async def work(stack: Any) -> Any:
        if text is not None:
            return await stack.search.search_text(text, top_k, filters, min_score)
        if data is not None:
            return await stack.search.search_image(data, top_k, filters, min_score)
        return await stack.search.search_product(str(product_id), top_k, filters, min_score)

    def remote(client: Any) -> Any:
        if text is not None:
            return client.search_text(text, top_k, filters, min_score)
        if data is not None:
            return client.search_image(data, top_k, filters, min_score)
        return client.similar(str(product_id), top_k, min_score, filters)

    response = dispatch(settings, work, remote)
    if as_json:
        sys.stdout.write(response.model_dump_json() + "\n")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{response.kind} search: {len(response.hits)} products")
    for col in ("#", "id", "name", "brand", "category", "color", "price", "similarity", "matched"):
        table.add_column(col)
    for rank, hit in enumerate(response.hits, start=1):
        p = hit.product
        table.add_row(  # catalog text is data, never markup
            *map(
                Text,
                (
                    str(rank),
                    hit.product_id,
                    p.name if p else "?",
                    (p.brand or "") if p else "",
                    (p.category or "") if p else "",
                    (p.color or "") if p else "",
                    f"{p.price:.2f}" if p and p.price is not None else "",
                    f"{hit.similarity:.3f}",
                    str(hit.matched),
                ),
            )
        )
    Console().print(table)
    cache = {True: "cache hit", False: "cache miss", None: "stored vectors"}[response.cache_hit]
    err.print(f"{response.timings_ms.get('total', 0):.1f} ms ({cache}); model {response.model}")
    if response.metadata_missing:
        err.print("[yellow]warning:[/yellow] MongoDB could not supply some metadata; ids and scores only")


@app.command()
@guarded
def delete(
    ids: Annotated[list[str], typer.Argument(help="Product ids")],
    model_repository: RepoOption = None,
) -> None:
    """Delete products from MongoDB and Qdrant."""

    async def work(stack: Any) -> Any:
        return await stack.ingest.delete(ids)

    deleted, unknown = dispatch(settings_for(model_repository), work, lambda c: c.delete(ids))
    err.print(f"deleted {len(deleted)} product(s)")
    if unknown:
        err.print(f"[yellow]unknown ids:[/yellow] {escape(', '.join(unknown))}")
        raise typer.Exit(1)


@app.command()
@guarded
def reindex(model_repository: RepoOption = None) -> None:
    """Re-embed every product into a new collection with the current model and swap it in atomically."""

    async def work(stack: Any) -> Any:
        return await stack.ingest.reindex()

    settings = settings_for(model_repository)
    from pipeline.client import ServiceClient

    if (client := ServiceClient.discover(settings)) is not None:
        client.close()
        raise InvalidInput(
            f"a service is running on this data ({client.url}) and owns the index: stop it, reindex, start it again"
        )
    report = run_with_stack(settings, work)
    err.print(f"[green]reindexed[/green] {report.updated} products in {report.seconds:.1f} s")
    for _, reason in report.rejected[:50]:
        err.print(f"  left out: {reason}", markup=False)


@app.command()
@guarded
def status(model_repository: RepoOption = None, as_json: JsonOption = False) -> None:
    """Counts in MongoDB and Qdrant and whether they agree, the model fingerprint, cache and health."""

    async def work(stack: Any) -> Any:
        return await stack.status()

    result = dispatch(settings_for(model_repository), work, lambda c: c.get("/v1/stats"))
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        Console().print_json(json.dumps(result, default=str))


def main() -> None:
    import pipeline.cli_jobs
    import pipeline.cli_models
    import pipeline.cli_service  # noqa: F401  (they register their commands)

    app()
