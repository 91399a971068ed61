"""Pure ASGI middleware: a request id, one JSON log line per request, body limits checked before reading, and
a deadline.

The body limit is enforced twice: from ``Content-Length`` before a byte is read (413 at once), and while
the body streams in, for chunked uploads that announce no length. A request still running at the deadline is
cancelled (writes are safe to cancel: rows not yet marked indexed are redone by the next write) and answered
503, so no call outlives the client waiting for it by much.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.errors import CHALLENGE, MISSING_KEY, error_response
from pipeline.errors import PayloadTooLarge

access = logging.getLogger("pipeline.access")
log = logging.getLogger("pipeline.api")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app: ASGIApp, body_limit: Callable[[str], int], deadline_s: float) -> None:
        self.app, self.body_limit, self.deadline_s = app, body_limit, deadline_s

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

        status_sent: int | None = None
        deadline = asyncio.timeout(self.deadline_s)

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = status_sent = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                message = f"request body over the limit of {limit} bytes"
                await error_response(413, "payload_too_large", message)(scope, receive, send_with_id)
                return
            if scope["path"].startswith("/v1/") and not (b"x-api-key" in headers or b"authorization" in headers):
                # No key at all: refuse before reading (and parsing) a body nobody is entitled to send.
                await error_response(401, "unauthorized", MISSING_KEY, {"WWW-Authenticate": CHALLENGE})(
                    scope, receive, send_with_id
                )
                return
            async with deadline:
                await self.app(scope, _limited(receive, limit), send_with_id)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                log.warning("request %s stopped at the %.0f s deadline", rid, self.deadline_s)
                failed, code = 503, "service_unavailable"
                message = (
                    f"the request took longer than {self.deadline_s:.0f} s and was stopped "
                    "(PIPELINE__API__REQUEST_TIMEOUT_S); try fewer items per request"
                )
            else:  # anything unforeseen: a clean 500 with the request id, the traceback logged
                log.error("request %s failed unexpectedly", rid, exc_info=exc)
                failed, code, message = 500, "internal", f"internal error (request id {rid})"
            if status_sent is None:
                await error_response(failed, code, message)(scope, receive, send_with_id)
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
