"""What a route needs from the running service, as FastAPI dependencies."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request

from pipeline.api.auth import Authenticator
from pipeline.api.metrics import Metrics
from pipeline.config import Settings
from pipeline.errors import InvalidInput
from pipeline.jobs.runner import JobRunner
from pipeline.schemas import SearchResponse
from pipeline.stack import Stack
from pipeline.wire import WireSearch


@dataclass
class Service:
    """The one owner of the stack for this process, opened in the app's lifespan."""

    settings: Settings
    stack: Stack
    auth: Authenticator
    metrics: Metrics
    urls: httpx.AsyncClient  # fetches URLs that requests name (public hosts only, by default)
    uploads: Path  # where images sent inside requests are kept
    runner: JobRunner  # background jobs: run here (LocalRunner) or queued for Celery workers (CeleryRunner)
    started: float = field(default_factory=time.time)
    health_cache: tuple[float, dict[str, Any]] | None = None
    live_cache: tuple[float, dict[str, Any]] | None = None  # figures per generation (GET /v1/models), 2 s

    def answer(self, response: SearchResponse) -> WireSearch:
        self.metrics.observe(response)
        return WireSearch.of(response)


# Dependencies are ``async def`` even with nothing to await: FastAPI runs a plain ``def`` one in its thread
# pool, two hand-offs per request for a dictionary lookup.


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def only_params(*names: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing query parameters the route does not take: ``?colour=red`` must fail, not
    silently return unfiltered results."""
    allowed = set(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)}")

    return check
