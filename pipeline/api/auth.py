"""API keys at the edge: ``X-API-Key: K`` or ``Authorization: Bearer K``, each key with a scope.

Keys live hashed in MongoDB (``pipeline.stores.keys``). A checked key is trusted for ``key_cache_s`` seconds
without another read; a revocation through this service drops it at once, and while MongoDB is down a key
seen before keeps working (searches still answer then, flagged). The service's local token (in its service
file, mode 0600) is an admin key for its own user on its own machine.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.errors import MISSING_KEY
from pipeline.errors import Forbidden, StoreUnavailable, Unauthorized
from pipeline.stores.keys import KeyStore, Scope, digest

log = logging.getLogger(__name__)

LOCAL = "local"  # the principal name of the local token


@dataclass(frozen=True)
class Principal:
    name: str
    scope: Scope
    local: bool = False  # the service's own user on its own machine: may name files on this machine


class Authenticator:
    def __init__(self, keys: KeyStore, local_token: str | None, cache_s: float) -> None:
        self._keys, self._local, self._cache_s = keys, local_token, cache_s
        self._seen: dict[str, tuple[float, Principal]] = {}  # digest -> (checked at, principal)
        self._revoked: dict[str, float] = {}  # digest -> when: a lookup racing the revocation must not cache it

    async def authenticate(self, presented: str | None) -> Principal:
        """The principal of a presented key. Raises Unauthorized; StoreUnavailable for an unseen key while
        MongoDB is down."""
        if not presented:
            raise Unauthorized(MISSING_KEY)
        if self._local and hmac.compare_digest(presented.encode(), self._local.encode()):
            return Principal(LOCAL, Scope.ADMIN, local=True)
        key_digest = digest(presented)
        seen = self._seen.get(key_digest)
        if seen and time.monotonic() - seen[0] < self._cache_s:
            return seen[1]
        try:
            record = await self._keys.lookup(presented)
        except StoreUnavailable:
            if seen:  # known before MongoDB went away: keep serving it
                return seen[1]
            raise
        if record is None:
            self._seen.pop(key_digest, None)
            raise Unauthorized("unknown or revoked API key")
        if key_digest in self._revoked:
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(record.name, record.scope)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[key_digest] = (time.monotonic(), principal)
        return principal

    def forget(self, key_digest: str) -> None:
        """A key revoked through this service: refused from its next request on."""
        self._seen.pop(key_digest, None)
        self._revoked[key_digest] = time.monotonic()


_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits a key whose scope covers ``scope`` and returns its principal."""

    async def dependency(
        request: Request,
        key: Annotated[str | None, Security(_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        principal = await request.app.state.service.auth.authenticate(key or (bearer.credentials if bearer else None))
        request.state.key_name = principal.name
        if not principal.scope.covers(scope):
            raise Forbidden(f"key {principal.name!r} has scope {principal.scope}; this needs {scope}")
        return principal

    return dependency


SearchKey = Annotated[Principal, Depends(require(Scope.SEARCH))]
WriteKey = Annotated[Principal, Depends(require(Scope.WRITE))]
AdminKey = Annotated[Principal, Depends(require(Scope.ADMIN))]
