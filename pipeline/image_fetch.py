"""Image bytes for ingestion: files read in a thread, URLs downloaded with a timeout per try, a limit on
concurrent downloads per host, and retries with exponential backoff on what may pass.

Retried: connection failures (refused, reset, a dropped answer), HTTP 5xx and 429, honouring a Retry-After
header up to ``retry_max_wait_s`` (one asking for longer fails the image at once). Not retried: other 4xx (the
image is not there, or not for us), a timeout (a host that did not answer within ``http_timeout_s`` would cost
retries x timeout per image), and bytes over the size limit. A query's image URL is fetched once, without the
per-host limit (``fetch_once``): a shopper's query neither waits behind a bulk job's downloads nor on backoffs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from pipeline.catalog import is_url
from pipeline.config import IngestSettings, LimitsSettings
from pipeline.errors import InvalidInput


class Transient(InvalidInput):
    """A download failure that may pass (connection error, 5xx, 429); ``retry_after``: what the host asked."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def read_file(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise InvalidInput(f"image {path}: {size} bytes is over the limit of {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"image {path}: cannot read ({exc.strerror or exc})") from exc


def retry_after_s(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def fetch_once(ref: str, client: httpx.AsyncClient, timeout_s: float, limit: int) -> bytes:
    """Bytes of a file or URL in one try, refused past ``limit``; raises InvalidInput (Transient when a retry
    may succeed)."""
    if not is_url(ref):
        return await asyncio.to_thread(read_file, Path(ref), limit)
    try:
        async with asyncio.timeout(timeout_s), client.stream("GET", ref) as resp:
            resp.raise_for_status()
            chunks, total = [], 0
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
                if total > limit:
                    raise InvalidInput(f"image {ref}: over the limit of {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise InvalidInput(f"image {ref}: no answer within {timeout_s:.0f} s") from None
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        if status == 429 or status >= 500:
            wait = retry_after_s(exc.response.headers.get("retry-after"))
            raise Transient(f"image {ref}: download failed ({exc})", wait) from exc
        raise InvalidInput(f"image {ref}: download failed ({exc})") from exc
    except httpx.TimeoutException as exc:
        raise InvalidInput(f"image {ref}: download failed ({exc!r})") from exc
    except httpx.TransportError as exc:
        raise Transient(f"image {ref}: download failed ({exc!r})") from exc
    except httpx.HTTPError as exc:
        raise InvalidInput(f"image {ref}: download failed ({exc})") from exc


class ImageFetcher:
    """Fetches ingestion's images: per-host concurrency limit and retries (see the module's docstring)."""

    def __init__(self, http: httpx.AsyncClient, settings: IngestSettings, limits: LimitsSettings) -> None:
        self.http, self.settings, self.limits = http, settings, limits
        # host -> (its slots, how many downloads hold or wait for one); dropped when nobody does.
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        slots, users = self._hosts.get(host) or (asyncio.Semaphore(self.settings.per_host_concurrency), 0)
        self._hosts[host] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._hosts[host]
            if users == 1:
                del self._hosts[host]
            else:
                self._hosts[host] = (slots, users - 1)

    async def fetch(self, ref: str, http: httpx.AsyncClient | None = None) -> bytes:
        """Bytes of a file or URL (``http``: the client for URLs, default the service's). Raises InvalidInput
        naming the image once the tries are spent or the failure is not one that passes."""
        limit, timeout_s = self.limits.max_image_bytes, self.settings.http_timeout_s
        if not is_url(ref):
            return await fetch_once(ref, http or self.http, timeout_s, limit)
        host = urlsplit(ref).netloc.lower()
        tries = self.settings.retries + 1
        for attempt in range(tries):
            try:
                async with self._slot(host):
                    return await fetch_once(ref, http or self.http, timeout_s, limit)
            except Transient as exc:
                max_wait = self.settings.retry_max_wait_s
                if exc.retry_after is not None and exc.retry_after > max_wait:
                    raise InvalidInput(
                        f"{exc}; the host asks to retry after {exc.retry_after:.0f} s, longer than the "
                        f"{max_wait:.0f} s an ingest waits (PIPELINE__INGEST__RETRY_MAX_WAIT_S)"
                    ) from exc
                if attempt == tries - 1:
                    raise InvalidInput(f"{exc}, {tries} tries") from exc
                # Jitter on the exponential step, so a host's failed downloads do not all come back at once.
                step = min(self.settings.retry_backoff_s * 2**attempt, max_wait)
                await asyncio.sleep(max(step * random.uniform(0.5, 1.0), exc.retry_after or 0.0))
        raise AssertionError("unreachable")  # the loop returns or raises
