"""What every CLI command shares: the Typer app, one-line errors, settings, and where the work runs.

``dispatch`` is the rule of one owner: when a service runs on the data (or ``PIPELINE__API__URL`` names
one), a command is sent to it over HTTP; otherwise the stack is opened in-process for the command.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pipeline.config import Settings
from pipeline.errors import InvalidInput, PipelineError

if TYPE_CHECKING:
    from pipeline.client import ServiceClient
    from pipeline.stack import Stack

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Multimodal product search: export CLIP, embed, search, serve.",
)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

RepoOption = Annotated[Path | None, typer.Option(help="Exported model repository (default from settings)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def guarded(fn: F) -> F:
    """Every PipelineError becomes one line on stderr (user text never read as markup) and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def settings_for(model_repository: Path | None) -> Settings:
    settings = Settings()
    if model_repository is not None:
        settings.encoder.model_repository = model_repository
    return settings


def run_with_stack(settings: Settings, work: Callable[[Stack], Awaitable[T]]) -> T:
    from pipeline.stack import open_stack

    async def runner() -> T:
        async with open_stack(settings) as stack:
            return await work(stack)

    return asyncio.run(runner())


def dispatch(
    settings: Settings, in_process: Callable[[Stack], Awaitable[T]], remote: Callable[[ServiceClient], T]
) -> T:
    """Run a command through the running service if there is one, else on an in-process stack."""
    from pipeline.client import ServiceClient

    client = ServiceClient.discover(settings)
    if client is None:
        return run_with_stack(settings, in_process)
    with client:
        return remote(client)


def read_image_file(path: Path, settings: Settings) -> bytes:
    """The file's bytes, checked up front so that an error names the file rather than its position."""
    from pipeline.preprocess import decode_image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from exc
    decode_image(data, settings.limits, name=str(path))
    return data
