"""``serve`` (the HTTP service that owns the stack), ``worker`` (a Celery worker that runs jobs) and ``keys``
(API keys), registered on the CLI app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from rich.markup import escape

from pipeline.cli_common import JsonOption, RepoOption, app, err, guarded, settings_for
from pipeline.config import Settings
from pipeline.stores.keys import ApiKey, KeyStore, Scope, check_name
from pipeline.wire import KeyOut

T = TypeVar("T")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, revoke.")
app.add_typer(keys_app, name="keys")


@app.command()
@guarded
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default PIPELINE__API__HOST, 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PIPELINE__API__PORT, 8000)")] = None,
    model_repository: RepoOption = None,
) -> None:
    """Run the HTTP service: one process owning encoders, index, MongoDB, cache and event log.

    OpenAPI at /docs and /openapi.json, Prometheus at /metrics. SIGTERM or Ctrl-C stops it cleanly."""
    import uvicorn

    from pipeline.api.app import check_production, create_app
    from pipeline.api.logs import log_config

    settings = settings_for(model_repository)
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    check_production(settings)
    if settings.jobs.runner == "celery":
        from pipeline.jobs.celery_app import check_celery

        check_celery(settings, warn=False)  # the service warns in its own log
    api = settings.api
    tls = bool(api.tls_certfile and api.tls_keyfile)
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"{'https' if tls else 'http'}://{local_host}:{port}"
    err.print(f"serving on {url} (docs {url}/docs); Ctrl-C stops it", markup=False)
    uvicorn.run(
        create_app(settings, url),
        host=host,
        port=port,
        log_config=log_config(),
        access_log=False,
        proxy_headers=api.behind_proxy,
        ssl_certfile=str(api.tls_certfile) if tls else None,
        ssl_keyfile=str(api.tls_keyfile) if tls else None,
        timeout_graceful_shutdown=30,
    )


@app.command()
@guarded
def worker(
    model_repository: RepoOption = None,
    loglevel: Annotated[str, typer.Option(help="Log level: debug, info, warning, error")] = "info",
) -> None:
    """Run a Celery worker for background jobs (PIPELINE__JOBS__RUNNER=celery, PIPELINE__JOBS__BROKER_URL).

    It opens the stack once and runs one job at a time, the ones services queue in Redis; state, progress
    and cancels go through MongoDB. Start as many as the work needs. SIGTERM hands a running job back."""
    from pipeline.api.fetch import url_client
    from pipeline.jobs.worker import run_worker

    settings = settings_for(model_repository)
    # Catalogs and images that API callers' jobs name are fetched as the service would: public hosts only.
    code = run_worker(
        settings,
        lambda: url_client(settings.api.allow_private_urls, settings.ingest.http_timeout_s),
        loglevel.upper(),
    )
    if code:
        raise typer.Exit(code)


# --- keys: through the running service (so a revocation takes effect there at once), else on MongoDB ------


def _on_keys(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    from pipeline.stack import open_mongo

    async def runner() -> T:
        async with contextlib.AsyncExitStack() as exits:
            mongo, _ = await open_mongo(settings, exits)
            keys = KeyStore(mongo.api_keys)
            await keys.ensure_indexes()
            return await work(keys)

    return asyncio.run(runner())


def _service(settings: Settings) -> Any:
    from pipeline.client import ServiceClient

    return ServiceClient.discover(settings)


def _row(key: ApiKey | dict[str, Any]) -> dict[str, Any]:
    """One listing row, the same whether the key came from the service (JSON) or from MongoDB."""
    return KeyOut.model_validate(key).model_dump(mode="json")


@keys_app.command("create")
@guarded
def keys_create(
    name: Annotated[str, typer.Option(help="A name to tell the key by (letters, digits, - _ .)")],
    scope: Annotated[Scope, typer.Option(help="search, write (also upsert/delete) or admin (also keys)")],
) -> None:
    """Create a key and print it once on stdout (it is stored hashed and cannot be shown again)."""
    settings = Settings()
    client = _service(settings)
    if client is not None:
        with client:
            key = client.post("/v1/keys", {"name": name, "scope": str(scope)})["key"]
    else:
        key = _on_keys(settings, lambda ks: ks.create(name, scope))[1]
    err.print(f"created key {escape(name)!r} ({scope}); it is shown once, keep it now:")
    sys.stdout.write(key + "\n")


@keys_app.command("list")
@guarded
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Also revoked keys")] = False,
    as_json: JsonOption = False,
) -> None:
    """Keys by name, scope and creation time (never the keys themselves)."""
    settings = Settings()
    client = _service(settings)
    if client is not None:
        with client:
            rows = [_row(k) for k in client.get("/v1/keys", include_revoked=include_revoked)]
    else:
        rows = [_row(k) for k in _on_keys(settings, lambda ks: ks.list(include_revoked))]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} key(s)")
    for col in ("name", "scope", "created", "hint", "revoked"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(Text(str(row[c] or "")) for c in ("name", "scope", "created", "hint", "revoked")))
    Console().print(table)


@keys_app.command("revoke")
@guarded
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name")]) -> None:
    """Revoke a key: it fails on its next request."""
    settings = Settings()
    client = _service(settings)
    if client is not None:
        with client:
            client.remove(f"/v1/keys/{quote(check_name(name), safe='')}")
    else:
        _on_keys(settings, lambda ks: ks.revoke(name))
    err.print(f"revoked {escape(name)!r}")
