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
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not _public(address):
            raise InvalidInput(
                f"{url}: {host} is a private, loopback or reserved address ({address}); the service fetches "
                "public URLs only (PIPELINE__API__ALLOW_PRIVATE_URLS=true allows others)"
            )


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global, and so is any IPv4 address it carries (IPv4-mapped or -compatible, 6to4, NAT64, Teredo)."""
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if packed[:12] == bytes(12) or address in _NAT64:  # ::a.b.c.d (deprecated form) or 64:ff9b::a.b.c.d
            embedded.append(ipaddress.IPv4Address(packed[12:]))
        return all(v4 is None or v4.is_global for v4 in embedded)
    return True


def url_client(allow_private: bool, timeout_s: float) -> httpx.AsyncClient:
    """The client for URLs that requests name."""
    hooks = {"request": [] if allow_private else [_public_only]}
    return httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=5, event_hooks=hooks)


def check_url(url: str) -> str:
    """Refuse anything but an http(s) URL before any work."""
    if not is_url(url):
        raise InvalidInput(f"{url[:200]!r}: only http(s) URLs are accepted")
    return url
