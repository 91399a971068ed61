"""Command line: ``python -m pipeline <command>``. Every PipelineError becomes one line on stderr and exit 1."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.cli_common import JsonOption, RepoOption, app, dispatch, err, guarded, run_with_stack, settings_for
from pipeline.config import Settings
from pipeline.errors import InvalidInput
from pipeline.types import Precision


@app.command()
@guarded
def export(
    model: Annotated[str, typer.Option(help="Hugging Face hub id or a save_pretrained folder")],
    out: Annotated[Path, typer.Option(help="Triton model repository to write")] = Path("model_repository"),
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Variants to build (repeatable); default all")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="max_batch_size in config.pbtxt")] = 64,
    calibration: Annotated[
        Path | None, typer.Option(help="Catalog whose images and titles calibrate the INT8 gate (default: drawn)")
    ] = None,
    min_cosine: Annotated[float, typer.Option(help="INT8 gate: least mean cosine to FP32, each tower")] = 0.95,
    min_overlap: Annotated[float, typer.Option(help="INT8 gate: least text→image top-10 overlap with FP32")] = 0.8,
) -> None:
    """Export CLIP's text and vision towers to ONNX (FP32, FP16, INT8) as a Triton model repository.

    Each INT8 variant is measured against FP32 and served only when it passes the accuracy gate."""
    from pipeline.export.repository import export_repository

    with err.status("exporting") as status:

        def log(msg: str) -> None:
            status.update(msg)
            err.print(msg)

        manifest = export_repository(
            model,
            out,
            precision or list(Precision),
            max_batch_size=max_batch_size,
            calibration=calibration,
            min_cosine=min_cosine,
            min_overlap=min_overlap,
            log=log,
        )
    err.print(f"[green]done[/green]: {out} ({manifest.name}, dim {manifest.dim})")


@app.command()
@guarded
def embed(
    model_repository: Annotated[Path | None, typer.Option(help="Exported repository (default from settings)")] = None,
    precision: Annotated[Precision | None, typer.Option(help="Variant to run (default: best for the device)")] = None,
    text: Annotated[list[str] | None, typer.Option(help="A text to embed (repeatable)")] = None,
    image: Annotated[list[Path] | None, typer.Option(help="An image file to embed (repeatable)")] = None,
) -> None:
    """Print one JSON object with one vector per input, in input order."""
    if bool(text) == bool(image):
        raise InvalidInput("give either --text or --image (one or more), not both and not neither")
    settings = Settings()
    if model_repository is not None:
        settings.encoder.model_repository = model_repository
    images = [_read_image(p, settings) for p in image or []]
    vectors = asyncio.run(_embed(settings, precision, text or [], images))
    sys.stdout.write(json.dumps(vectors) + "\n")


async def _embed(settings: Settings, precision: Precision | None, texts: list[str], images: list[bytes]) -> dict:
    from pipeline.encoders.factory import create_encoder

    encoder = await create_encoder(settings, precision)
    try:
        vectors = await (encoder.encode_texts(texts) if texts else encoder.encode_images(images))
    finally:
        await encoder.aclose()
    info = encoder.info
    return {
        "model": info.model,
        "precision": str(info.precision),
        "dim": info.dim,
        "vectors": vectors.tolist(),
    }


def _read_image(path: Path, settings: Settings) -> bytes:
    """The file's bytes, checked up front so that an error names the file rather than its position."""
    from pipeline.preprocess import decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from exc
    decode_image(data, settings.limits, name=str(path))
    return data


# --- the search pipeline ------------------------------------------------------------------------------------


def _count_rows(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
    except OSError:
        return None
    return max(lines - 1, 0) if path.suffix.lower() == ".csv" else lines


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
        task = progress.add_task("ingest", total=_count_rows(catalog))

        def advance(n: int) -> None:
            progress.advance(task, n)

        async def work(stack: Any) -> Any:
            return await stack.ingest.ingest(catalog, progress=advance)

        report = dispatch(settings, work, lambda c: c.ingest(catalog, settings.ingest.batch_size, advance))
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
    data = _read_image(image, settings) if image is not None else None

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


@app.command("demo-catalog")
@guarded
def demo_catalog(
    out: Annotated[Path, typer.Argument(help="Folder for catalog.jsonl, heldout.jsonl and the images")],
    per_combination: Annotated[int, typer.Option(min=1, help="Products per category x colour x pattern")] = 12,
    heldout: Annotated[int, typer.Option(min=0, help="Held-out drawings per combination")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Draw the offline demo catalog (6 categories x 8 colours x 4 patterns) and a held-out set."""
    from pipeline.demo_catalog import build_demo_catalog

    with err.status("drawing the demo catalog"):
        summary = build_demo_catalog(out, per_combination, heldout, seed)
    err.print(
        f"[green]done[/green]: {summary.products} products, {summary.images} images, "
        f"{summary.heldout} held-out drawings → {summary.catalog}"
    )


@app.command()
@guarded
def train(
    model: Annotated[str, typer.Option(help="'small' (a compact CLIP from a config), a hub id or a folder")],
    catalog: Annotated[Path, typer.Option(help="Catalog whose image-title pairs to learn")],
    out: Annotated[Path, typer.Option(help="Output folder (export takes it)")],
    heldout: Annotated[Path | None, typer.Option(help="Held-out pairs (default: heldout.jsonl beside)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    lr: Annotated[float | None, typer.Option(help="Default 5e-4 for small, 1e-5 to fine-tune")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Contrastive fine-tuning on the catalog; prints held-out recall@1/5/10 before and after."""
    from pipeline.export.finetune import train as run_training

    report = run_training(model, catalog, out, heldout=heldout, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=seed, log=lambda m: err.print(m, markup=False))  # fmt: skip
    err.print(f"[green]trained[/green] {report.pairs} pairs in {report.seconds:.0f} s → {out}")
    if report.after:
        err.print(f"held-out recall before {report.before} → after {report.after}", markup=False)


@app.command("serve-triton")
@guarded
def serve_triton(
    model_repository: Annotated[Path, typer.Option(help="Exported repository")] = Path("model_repository"),
    grpc_port: Annotated[int, typer.Option(help="gRPC port (PIPELINE__TRITON__URL=127.0.0.1:PORT)")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port (health, metrics)")] = 8000,
) -> None:
    """Run the bundled tritonserver on an exported repository with the cpu_test configs (development)."""
    import signal as signals
    import threading

    from pipeline.triton.server import LocalTriton

    server = LocalTriton(
        model_repository, grpc_port=grpc_port, http_port=http_port, log_file=model_repository.parent / "triton.log"
    )
    server.start()
    err.print(
        f"[green]Triton ready[/green]: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics "
        f"{server.metrics_url}; log {server.log_file}. Ctrl-C stops it."
    )
    stop = threading.Event()
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main() -> None:
    import pipeline.cli_service  # noqa: F401  (registers serve and keys)

    app()
