"""The FastAPI app: its lifespan opens the one stack of this process and closes it on shutdown.

``python -m pipeline serve`` runs it under uvicorn. On SIGTERM/SIGINT uvicorn stops accepting connections,
lets in-flight requests finish, then the lifespan closes the stack, which gives queued events
``PIPELINE__EVENTS__FLUSH_TIMEOUT_S`` to reach MongoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_fastapi_instrumentator import Instrumentator

from pipeline import aio
from pipeline.api import errors
from pipeline.api.auth import Authenticator
from pipeline.api.deps import Service
from pipeline.api.fetch import url_client
from pipeline.api.metrics import Metrics
from pipeline.api.middleware import RequestContext
from pipeline.api.routes import buyers, dev, health, jobs, keys, models, products, rank, search
from pipeline.config import Settings
from pipeline.errors import ModelError, PipelineError
from pipeline.jobs.celery_app import CeleryRunner, check_celery
from pipeline.jobs.runner import JobRunner, LocalRunner
from pipeline.service_file import ServiceFile
from pipeline.stack import Stack, open_stack
from pipeline.wire import UrlQuery

log = logging.getLogger("pipeline.api")
_UPLOAD_SLACK = 64 * 1024  # multipart framing and form fields around the image itself


def check_production(settings: Settings, live_keys: int | None = None) -> None:
    """Production refuses to start without TLS (or a proxy that terminates it) and without an API key."""
    if settings.environment != "production":
        return
    api = settings.api
    if not api.behind_proxy and not (api.tls_certfile and api.tls_keyfile):
        raise ModelError(
            "production needs TLS: set PIPELINE__API__TLS_CERTFILE and PIPELINE__API__TLS_KEYFILE, or "
            "PIPELINE__API__BEHIND_PROXY=true when a proxy terminates TLS"
        )
    if live_keys == 0:
        raise ModelError("production needs an API key: python -m pipeline keys create --name NAME --scope search")


def _runner(settings: Settings, stack: Stack, urls: httpx.AsyncClient) -> JobRunner:
    """Jobs run here (the embedded default), or only get queued here for Celery workers."""
    if settings.jobs.runner == "celery":
        return CeleryRunner(settings, stack.jobs)
    return LocalRunner(stack, stack.jobs, urls)


async def _follow(stack: Stack) -> None:
    """Switch to the active generation when another process (a Celery worker's activation) changed it."""
    while True:
        await asyncio.sleep(stack.settings.models.follow_s)
        try:
            await stack.follow()
        except Exception as exc:
            if aio.cancelling():  # the call swallowed the service's shutdown
                raise asyncio.CancelledError from exc
            log.warning("following the active model version: %s", exc)


def create_app(settings: Settings, public_url: str | None = None) -> FastAPI:
    """The service. ``public_url``: where it listens, announced in the service file for local clients (none
    is written without it)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with _open(app):
                yield
        except PipelineError as exc:  # one line says why; uvicorn then exits ("Application startup failed")
            log.error("cannot serve: %s", exc)
            raise

    @contextlib.asynccontextmanager
    async def _open(app: FastAPI) -> AsyncIterator[None]:
        check_production(settings)
        if settings.jobs.runner == "celery":
            check_celery(settings)
        async with contextlib.AsyncExitStack() as exits:
            stack = await exits.enter_async_context(open_stack(settings))
            check_production(settings, await stack.keys.count())
            announce = ServiceFile.new(public_url) if public_url else None
            urls = url_client(settings.api.allow_private_urls, settings.ingest.http_timeout_s)
            exits.push_async_callback(urls.aclose)
            uploads = settings.qdrant.path.parent / "uploads"  # beside the data, wherever the service file is
            auth = Authenticator(stack.keys, announce.token if announce else None, settings.api.key_cache_s)
            metrics.attach(stack)
            runner = _runner(settings, stack, urls)
            await runner.start()
            follower = asyncio.create_task(_follow(stack), name="follow the active generation")
            exits.push_async_callback(aio.stop, follower)
            exits.push_async_callback(runner.aclose)  # before the stack closes: a running job is handed back
            app.state.service = Service(settings, stack, auth, metrics, urls, uploads, runner)
            if announce:
                path = settings.service_file()
                announce.write(path)
                exits.callback(announce.remove, path)
            log.info("serving %s (%s, %s)", stack.encoder.info.model, stack.encoder.info.backend, public_url or "")
            yield

    app = FastAPI(
        title="Product search",
        version="1.0",
        summary="Multimodal product search: words or a photo in, matching catalog products out.",
        lifespan=lifespan,
    )
    errors.install(app)
    routers = (health.router, search.router, rank.router, products.router, keys.router, jobs.router, buyers.router,
               models.router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    if settings.environment != "production":
        app.include_router(dev.router)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"], should_group_status_codes=False,
                   should_ignore_untemplated=True).instrument(app)  # fmt: skip

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        body = await metrics.render(request.app.state.service.stack)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    image_limit = settings.limits.max_image_bytes + _UPLOAD_SLACK

    def body_limit(path: str) -> int:
        return image_limit if path == "/v1/search/image" else settings.api.max_body_bytes

    app.add_middleware(RequestContext, body_limit=body_limit, deadline_s=settings.api.request_timeout_s)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            defs = UrlQuery.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["UrlQuery"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
