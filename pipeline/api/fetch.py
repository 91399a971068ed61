"""Fetching what a request names (``url`` fields): http(s) only, and no private or loopback hosts unless
``PIPELINE__API__ALLOW_PRIVATE_URLS`` says so, checked on every hop (redirects included) so that a public
URL cannot bounce the service into its own network.

The check resolves the host and refuses it if any address is not global; the HTTP client resolves again
when it connects, so a host that changes its answer in between (DNS rebinding) is outside this guard: put
an egress proxy in front of the service where that matters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from pipeline.catalog import is_url
from pipeline.errors import InvalidInput


async def _public_only(request: httpx.Request) -> None:
    url, host = str(request.url), request.url.host
    if request.url.scheme not in ("http", "https"):
        raise InvalidInput(f"{url}: only http(s) URLs are fetched")
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(f"{url}: cannot resolve {host} ({exc.strerror or exc})") from exc
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            raise InvalidInput(
                f"{url}: {host} is a private, loopback or reserved address ({address}); the service fetches "
                "public URLs only (PIPELINE__API__ALLOW_PRIVATE_URLS=true allows others)"
            )


def url_client(allow_private: bool, timeout_s: float) -> httpx.AsyncClient:
    """The client for URLs that requests name."""
    hooks = {"request": [] if allow_private else [_public_only]}
    return httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=5, event_hooks=hooks)


def check_url(url: str) -> str:
    """Refuse anything but an http(s) URL before any work."""
    if not is_url(url):
        raise InvalidInput(f"{url[:200]!r}: only http(s) URLs are accepted")
    return url
