"""Model commands: ``export``, ``embed``, ``demo-catalog``, ``train``, ``serve-triton`` (registered on the CLI)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli_common import app, err, guarded, read_image_file
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
    text_model: Annotated[
        str | None,
        typer.Option(help="Multilingual text tower in CLIP's space (sentence-transformers or M-CLIP; hub id, folder)"),
    ] = None,
) -> None:
    """Export CLIP's text and vision towers to ONNX (FP32, FP16, INT8) as a Triton model repository, and with
    --text-model a multilingual text tower beside them (its dimension must be the image tower's).

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
        if text_model is not None:
            from pipeline.export.text_repository import export_text_tower

            manifest = export_text_tower(text_model, out, precision or list(Precision), max_batch_size=max_batch_size,
                                         calibration=calibration, min_cosine=min_cosine, min_overlap=min_overlap,
                                         log=log)  # fmt: skip
    extra = f", multilingual text tower {manifest.multilingual.kind}" if manifest.multilingual else ""
    err.print(f"[green]done[/green]: {out} ({manifest.name}, dim {manifest.dim}{extra})")


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
    images = [read_image_file(p, settings) for p in image or []]
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
    out: Annotated[Path, typer.Option(help="Output folder (export takes it)")],
    catalog: Annotated[Path | None, typer.Option(help="Catalog whose image-title pairs to learn")] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="Or a pairs file (JSON lines: image, text, negatives, split)")
    ] = None,
    heldout: Annotated[Path | None, typer.Option(help="Held-out pairs (default: heldout.jsonl beside)")] = None,
    captions: Annotated[
        str,
        typer.Option(
            help="More texts per product (JSON lines {id, texts}), sampled with the title and description: a "
            "file, 'auto' (captions.jsonl beside the catalog, if any) or 'none' (titles only)"
        ),
    ] = "none",
    epochs: Annotated[int | None, typer.Option(min=1, help="Default 12 (150 with --distill-text)")] = None,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    lr: Annotated[float | None, typer.Option(help="Default 5e-4 for small, 1e-5 to fine-tune")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    distill_text: Annotated[
        bool, typer.Option(help="Distil a multilingual text tower from --model's text tower instead (--parallel)")
    ] = False,
    parallel: Annotated[
        list[Path] | None,
        typer.Option(
            help="--distill-text: JSON lines {source, target}: translations, or a shopper's phrasings of the source "
            "(source: a text, or a list of texts whose mean the target aims at); repeat for more files"
        ),
    ] = None,
    student: Annotated[
        str, typer.Option(help="--distill-text: 'small' (a compact DistilBERT) or a sentence-transformers model")
    ] = "small",
) -> None:
    """Contrastive fine-tuning on the catalog; prints held-out recall@1/5/10 before and after. With
    --distill-text: a multilingual student for `export --text-model`, distilled on parallel sentences."""
    from pipeline.export.finetune import train as run_training

    if distill_text:
        from pipeline.export.distill import distill

        if not parallel:
            raise InvalidInput("--distill-text needs --parallel (JSON lines: source, target)")
        result = distill(model, parallel, out, student=student, epochs=epochs or 150, batch_size=batch_size, lr=lr,
                         seed=seed, log=lambda m: err.print(m, markup=False))  # fmt: skip
        err.print(f"[green]distilled[/green] {result.pairs} pairs in {result.seconds:.0f} s → {out}; held-out "
                  f"cosine to the teacher {result.cosine}")  # fmt: skip
        return
    if (catalog is None) == (pairs is None):
        raise InvalidInput("give either --catalog or --pairs")
    caption_source = None if captions == "none" else Path(captions) if captions != "auto" else captions
    report = run_training(model, catalog, out, heldout=heldout, epochs=epochs or 12, batch_size=batch_size, lr=lr,
                          seed=seed, log=lambda m: err.print(m, markup=False), pairs=pairs,
                          captions=caption_source)  # fmt: skip
    err.print(f"[green]trained[/green] {report.pairs} pairs in {report.seconds:.0f} s → {out}")
    if report.after:
        err.print(f"held-out recall before {report.before} → after {report.after}", markup=False)
    if report.phrasings_after:
        err.print(f"held-out phrasings before {report.phrasings_before} → after {report.phrasings_after}",
                  markup=False)  # fmt: skip


@app.command("serve-triton")
@guarded
def serve_triton(
    model_repository: Annotated[Path, typer.Option(help="Exported repository")] = Path("model_repository"),
    grpc_port: Annotated[int, typer.Option(help="gRPC port (PIPELINE__TRITON__URL=127.0.0.1:PORT)")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port (health, metrics)")] = 8000,
    versions_repository: Annotated[
        Path | None,
        typer.Option(
            help="Second repository for model versions activated later (PIPELINE__TRITON__VERSIONS_REPOSITORY)"
        ),
    ] = None,
) -> None:
    """Run the bundled tritonserver on an exported repository with the cpu_test configs (development), in
    explicit model-control mode."""
    import signal as signals
    import threading

    from pipeline.triton.server import LocalTriton

    server = LocalTriton(
        model_repository,
        grpc_port=grpc_port,
        http_port=http_port,
        log_file=model_repository.parent / "triton.log",
        explicit=True,  # model versions switched by the service are loaded through the model-control API
        versions_repository=versions_repository,
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
