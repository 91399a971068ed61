"""Command line: ``python -m pipeline <command>``. Every PipelineError becomes one line on stderr and exit 1."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from pipeline.config import Settings
from pipeline.errors import InvalidInput, PipelineError
from pipeline.types import Precision

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Multimodal product search: export CLIP, embed, search.",
)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@guarded
def export(
    model: Annotated[str, typer.Option(help="Hugging Face hub id or a save_pretrained folder")],
    out: Annotated[Path, typer.Option(help="Triton model repository to write")] = Path("model_repository"),
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Variants to build (repeatable); default all")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="max_batch_size in config.pbtxt")] = 64,
) -> None:
    """Export CLIP's text and vision towers to ONNX (FP32, FP16, INT8) as a Triton model repository."""
    from pipeline.export.repository import export_repository

    with err.status("exporting") as status:
        manifest = export_repository(
            model,
            out,
            precision or list(Precision),
            max_batch_size=max_batch_size,
            log=lambda msg: (status.update(msg), err.print(msg)),
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


def main() -> None:
    app()
