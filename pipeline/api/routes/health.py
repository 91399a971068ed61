"""Health (no key): each component's state, the model, uptime, counts, and the process's CPU and memory."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pipeline.api.deps import Service, ServiceDep
from pipeline.api.errors import documented, error_response
from pipeline.errors import PipelineError
from pipeline.stores.vectors import ModelStamp

router = APIRouter(tags=["health"])
_PROCESS = psutil.Process()
_FRESH_S = 1.0  # checks are reused this long: a probe storm costs the encoder nothing


async def _check(name: str, probe: Any) -> tuple[str, dict[str, Any]]:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(3.0):
            detail = await probe
    except (PipelineError, TimeoutError) as exc:
        return name, {"status": "down", "error": str(exc) or "no answer within 3 s"}
    return name, {"status": "ok", "ms": round((time.perf_counter() - start) * 1000, 2), **(detail or {})}


async def _encoder(svc: Service) -> dict[str, Any]:
    await svc.stack.encoder.encode_texts(["health check"])
    info = svc.stack.encoder.info
    return {"backend": info.backend, "precision": str(info.precision)}


async def _qdrant(svc: Service) -> dict[str, Any]:
    info = await svc.stack.index.info()
    matches = info.stamp is None or info.stamp.matches(ModelStamp.of(svc.stack.encoder.info))  # titles' tower too
    return {"backend": info.backend, "collection": info.collection, "points": info.points, "model_matches": matches}


async def _mongo(svc: Service) -> dict[str, Any]:
    await svc.stack.mongo.ping()
    return {**await svc.stack.mongo.counts(), "managed": svc.stack.mongod is not None}


async def report(svc: Service) -> dict[str, Any]:
    cached = svc.health_cache
    if cached and time.monotonic() - cached[0] < _FRESH_S:
        return cached[1]
    checks = dict(await asyncio.gather(
        _check("encoder", _encoder(svc)), _check("qdrant", _qdrant(svc)), _check("mongo", _mongo(svc))
    ))  # fmt: skip
    info, cache = svc.stack.encoder.info, svc.stack.cache.stats()
    with _PROCESS.oneshot():
        process = {
            "pid": _PROCESS.pid,
            "cpu_percent": _PROCESS.cpu_percent(),
            "cpu_seconds": round(sum(_PROCESS.cpu_times()[:2]), 2),
            "rss_mb": round(_PROCESS.memory_info().rss / 2**20, 1),
            "threads": _PROCESS.num_threads(),
        }
    body = {
        "status": "ok" if all(c["status"] == "ok" for c in checks.values()) else "degraded",
        "components": checks,
        "model": {
            "name": info.model,
            "fingerprint": info.fingerprint,
            "precision": str(info.precision),
            "backend": info.backend,
            "dim": info.dim,
            "titles": info.titles,
        },
        "uptime_s": round(time.time() - svc.started, 1),
        "products": {"mongo": checks["mongo"].get("products"), "qdrant_points": checks["qdrant"].get("points")},
        "cache": {"entries": cache.entries, "max_entries": cache.max_entries, "hit_rate": round(cache.hit_rate, 3)},
        "events": {
            "written": svc.stack.events.written,
            "dropped": svc.stack.events.dropped,
            "pending": svc.stack.events.pending,
        },
        "process": process,
    }
    svc.health_cache = (time.monotonic(), body)
    return body


@router.get("/health")
async def health(svc: ServiceDep) -> dict[str, Any]:
    """``ok``, or ``degraded`` with the component that is down (the service still answers what it can)."""
    return await report(svc)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process answers at all; checks nothing else (a liveness probe must not restart a replica
    because a store is down: readiness takes it out of rotation instead)."""
    return {"status": "alive"}


@router.get("/health/ready", responses=documented(503))
async def ready(svc: ServiceDep) -> JSONResponse:
    """200 when queries can be answered (encoder and vector index up; MongoDB only adds metadata)."""
    body = await report(svc)
    down = [n for n in ("encoder", "qdrant") if body["components"][n]["status"] != "ok"]
    if down:
        return error_response(503, "not_ready", f"not ready: {', '.join(down)} down")
    return JSONResponse({"status": "ready"})
