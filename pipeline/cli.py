"""Command line: ``python -m pipeline <command>``. Every PipelineError becomes one line on stderr and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline import cli_sources as src
from pipeline.catalog import count_rows
from pipeline.cli_common import (
    JsonOption,
    RepoOption,
    app,
    dispatch,
    err,
    guarded,
    read_image_file,
    settings_for,
)
from pipeline.errors import InvalidInput, PipelineError
from pipeline.schemas import IngestReport

# --- the search pipeline ------------------------------------------------------------------------------------


@app.command()
@guarded
def ingest(
    catalog: Annotated[Path | None, typer.Argument(help="Catalog file: .jsonl, .json or .csv")] = None,
    sql_url: src.SqlUrl = None,
    query: src.Query = None,
    by_id_query: src.ByIdQuery = None,
    mongo_url: src.MongoUrl = None,
    database: src.Database = None,
    collection: src.Collection = None,
    filter_json: src.Filter = None,
    mapping: src.Mapping = None,
    updated_at: src.UpdatedAt = None,
    image_base: src.ImageBase = None,
    source_name: src.SourceName = None,
    model_repository: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate, store and embed a catalog: a file, a SQL query (--sql-url, --query) or a MongoDB collection
    (--mongo-url, --database, --collection); with none of these, the configured source (PIPELINE__SOURCE__*).
    Unchanged rows cost nothing; bad rows are listed and skipped.

    A job (see ``jobs``): run by the service when one runs on this machine, here in the foreground otherwise;
    to a service elsewhere a file's rows are sent in batches with their images, a source is read there."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.cli_jobs import finish_job, run_job
    from pipeline.client import ServiceClient
    from pipeline.jobs.model import JobKind, JobState

    settings = settings_for(model_repository)
    source = src.source_param(sql_url, query, by_id_query, mongo_url, database, collection, filter_json, mapping,
                              updated_at, image_base, source_name)  # fmt: skip
    if catalog is not None and source is not None:
        raise InvalidInput("give a catalog file or a source, not both")
    if catalog is None:
        if source is None and settings.source.type is None:
            raise InvalidInput("give a catalog file, --sql-url or --mongo-url (or configure PIPELINE__SOURCE__*)")
        finish_job(run_job(settings, JobKind.INGEST, {"source": source or "configured"}, quiet=as_json), as_json)
        return
    client = ServiceClient.discover(settings)
    if client is None or client.local:
        if client is not None:
            client.close()
        job = run_job(settings, JobKind.INGEST, {"path": str(catalog.resolve())}, quiet=as_json)
        if job.state is not JobState.SUCCEEDED:
            raise PipelineError(f"ingest job {job.id} {job.state}: {job.message or ''}".rstrip(": "))
        report = report_of(job)
    else:
        columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with client, Progress(*columns, console=err, transient=True, disable=as_json) as progress:
            task = progress.add_task("ingest", total=count_rows(catalog))
            strict = settings.ingest.strict_fields
            report = client.ingest(catalog, settings.ingest.batch_size, lambda n: progress.advance(task, n), strict)
    rejected = max(len(report.rejected), report.rejected_count or 0)  # a job keeps the first 1,000 reasons
    summary = {
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": [{"line": line, "reason": reason} for line, reason in report.rejected],
        "rejected_count": rejected,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    rate = (report.added + report.updated) / report.seconds if report.seconds else 0.0
    err.print(
        f"[green]ingested[/green] {catalog}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {rejected} rejected in {report.seconds:.1f} s "
        f"({rate:.1f} products/s embedded)"
    )
    for line, reason in report.rejected[:50]:
        err.print(f"  line {line}: {reason}", soft_wrap=True, markup=False)
    if rejected > 50:
        kept = " (the first 1,000 reasons are kept)" if rejected > len(report.rejected) else ""
        err.print(f"  … and {rejected - 50} more (use --json for the reasons{kept})")


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
    for col in ("#", "id", "name", "brand", "category", "color", "price", "score", "similarity", "matched"):
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
                    f"{hit.score:.3f}",  # what the order follows
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
    """Re-embed every product into a new collection with the current model and swap it in atomically.

    A job: run by the running service (queries go on meanwhile; product writes wait), or here."""
    from pipeline.cli_jobs import run_job
    from pipeline.jobs.model import JobKind, JobState

    job = run_job(settings_for(model_repository), JobKind.REINDEX, {})
    if job.state is not JobState.SUCCEEDED:
        raise PipelineError(f"reindex job {job.id} {job.state}: {job.message or ''}".rstrip(": "))
    err.print(f"[green]reindexed[/green] {job.result.get('reindexed', 0)} products in {_seconds(job):.1f} s")
    if job.result.get("left_out"):
        err.print(f"  {job.result['left_out']} left out: their images could not be read", markup=False)


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


def _seconds(job: Any) -> float:
    return (job.finished - job.started).total_seconds() if job.finished and job.started else 0.0


def report_of(job: Any) -> IngestReport:
    """An ingest job's outcome as the report an in-process ingest gives."""
    rejected = sorted((e.row or 0, e.message) for e in job.errors)
    counts = {k: int(job.result.get(k, 0)) for k in ("added", "updated", "unchanged")}
    total = int(job.result.get("rejected", len(rejected)))
    return IngestReport(**counts, rejected=rejected, seconds=_seconds(job), rejected_count=total)


def main() -> None:
    import pipeline.cli_jobs
    import pipeline.cli_lifecycle
    import pipeline.cli_models
    import pipeline.cli_recommend
    import pipeline.cli_service  # noqa: F401  (they register their commands)

    app()
