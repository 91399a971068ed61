"""Errors at the edge: every failure is a JSON body ``{"error": {"code", "message"}}`` with its status.

The pipeline's error family maps through ``pipeline.errors.WIRE``; request validation is a 422 naming the
fields; anything unforeseen is a 500 that says only that (the traceback goes to the server log, with the
request id, never to the client).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pipeline.errors import Busy, PayloadTooLarge, PipelineError, Unauthorized, wire_code
from pipeline.schemas import describe_errors
from pipeline.wire import ErrorBody

log = logging.getLogger("pipeline.api")

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
_DESCRIPTIONS = {
    401: "No API key, or an unknown or revoked one",
    403: "The key's scope does not cover this route",
    404: "Unknown product or key (or an id no route can carry, such as one with a line break)",
    409: "Conflict with what exists",
    413: "Body or upload over its limit",
    415: "Not an image, or not JSON / multipart",
    422: "Invalid input: a field, a value, a text or an image the service cannot use",
    502: "The catalog source (a SQL database, a MongoDB collection) is down or refused the query",
    503: "A component (encoder, Qdrant, MongoDB) is unavailable, or a re-index holds the collection (Retry-After)",
}


CHALLENGE = 'Bearer, APIKey header="X-API-Key"'
MISSING_KEY = "an API key is required: send X-API-Key: <key> or Authorization: Bearer <key>"


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all with the error body."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(PipelineError)
    async def pipeline_error(request: Request, exc: PipelineError) -> JSONResponse:
        code, status = wire_code(exc)
        if status >= 500 and code == "internal":
            log.error("request %s failed: %s", getattr(request.state, "request_id", "?"), exc, exc_info=exc)
            return error_response(status, code, "internal error")
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": CHALLENGE}
        elif isinstance(exc, Busy):
            headers = {"Retry-After": "5"}
        return error_response(status, code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_input", describe_errors(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PayloadTooLarge):  # FastAPI wraps a failed body read in a 400
            return error_response(413, "payload_too_large", str(exc.__cause__))
        if exc.status_code == 400:  # a body FastAPI could not parse (bad UTF-8, nesting too deep): bad input
            return error_response(422, "invalid_input", f"the request body cannot be parsed ({exc.detail})")
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "?")
        log.error("request %s failed unexpectedly", rid, exc_info=exc)
        return error_response(500, "internal", f"internal error (request id {rid})")
