"""Pure ASGI middleware: a request id, one JSON log line per request, and body limits checked before reading.

The body limit is enforced twice: from ``Content-Length`` before a byte is read (413 at once), and while
the body streams in, for chunked uploads that announce no length.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import PayloadTooLarge

access = logging.getLogger("pipeline.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app: ASGIApp, body_limit: Callable[[str], int]) -> None:
        self.app, self.body_limit = app, body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        start = time.perf_counter()
        status = 500
        limit = self.body_limit(scope["path"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await _too_large(send_with_id, limit)
                return
            await self.app(scope, _limited(receive, limit), send_with_id)
        finally:
            route = scope.get("route")
            line: dict[str, Any] = {
                "request_id": rid,
                "method": scope["method"],
                "route": getattr(route, "path", scope["path"]),
                "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 2),
                "key": state.get("key_name"),
            }
            access.info(json.dumps(line))


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
        return message

    return counted


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {"error": {"code": "payload_too_large", "message": f"request body over the limit of {limit} bytes"}}
    ).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
