"""The model registry: every exported model is a version, recorded in MongoDB; its files live in a folder.

A version document (``_id`` = ``v<n>``) says what the model is (name, source, fingerprint, dim, precisions and the
INT8 gate's figures from its manifest), where its files are (the exported repository, the checkpoint it was
trained into), its status (``candidate``, ``active``, ``retired``), the collection built with it (a generation:
the version + that collection), and the figures of its training and validation. One more document,
``_id: "@active"``, names the active version: the one place a switch writes, so it is atomic.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from pipeline.errors import NotFound, StoreUnavailable
from pipeline.manifest import Manifest

ACTIVE = "@active"
COUNTER = "@counter"


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"  # exported; not serving (a previous active one stays built for a rollback)
    ACTIVE = "active"
    RETIRED = "retired"  # its collection dropped; kept as a record


class ModelVersion(BaseModel):
    version: str
    name: str
    source: str
    fingerprint: str
    dim: int
    precisions: list[str]
    gate: dict[str, Any] = Field(default_factory=dict, description="The INT8 gate's verdict and figures")
    repository: str = Field(description="The exported model repository")
    checkpoint: str | None = Field(default=None, description="The trainable checkpoint (a save_pretrained folder)")
    created: dt.datetime
    status: VersionStatus = VersionStatus.CANDIDATE
    base: bool = Field(default=False, description="Its collection is the configured one (the first version)")
    built: bool = Field(default=False, description="Its collection is filled (a generation exists)")
    built_at: dt.datetime | None = None
    current_until: dt.datetime | None = Field(
        default=None, description="When it stopped serving: writes after this are caught up on a rollback"
    )
    parent: str | None = Field(default=None, description="The version it was fine-tuned from")
    train: dict[str, Any] = Field(default_factory=dict, description="What its training job used and measured")
    validation: dict[str, Any] = Field(default_factory=dict, description="Candidate vs active on held-out pairs")
    refused: str | None = Field(default=None, description="Why its last activation was refused")
    activated_at: dt.datetime | None = None

    @classmethod
    def of(cls, version: str, manifest: Manifest, repository: Path, checkpoint: Path | None, **extra: Any
           ) -> ModelVersion:  # fmt: skip
        gate = {str(p): q.model_dump() for p in manifest.precisions() if (q := manifest.servable(p)) is not None}
        return cls(version=version, name=manifest.name, source=manifest.source, fingerprint=manifest.fingerprint,
                   dim=manifest.dim, precisions=sorted(map(str, manifest.precisions())), gate=gate,
                   repository=str(repository), checkpoint=str(checkpoint) if checkpoint else None,
                   created=dt.datetime.now(dt.UTC), **extra)  # fmt: skip


def _doc(v: ModelVersion) -> dict[str, Any]:
    return {"_id": v.version, **v.model_dump(mode="python", exclude={"version"})}


def _version(doc: dict[str, Any]) -> ModelVersion:
    return ModelVersion.model_validate({**doc, "version": doc["_id"]})


class ModelRegistry:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._c = collection

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: model registry ({what}): {exc}") from exc

    async def next_version(self) -> str:
        doc = await self._call("number", self._c.find_one_and_update(
            {"_id": COUNTER}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER))  # fmt: skip
        return f"v{doc['n']}"

    async def add(self, version: ModelVersion) -> ModelVersion:
        try:
            await self._c.insert_one(_doc(version))
        except DuplicateKeyError:
            raise StoreUnavailable(f"model version {version.version} exists already") from None
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB: model registry: {exc}") from exc
        return version

    async def get(self, version: str) -> ModelVersion:
        doc = await self._call("read", self._c.find_one({"_id": version}))
        if doc is None or version.startswith("@"):
            raise NotFound(f"unknown model version {version!r} (`python -m pipeline models list`)")
        return _version(doc)

    async def list(self) -> list[ModelVersion]:
        docs = await self._call("list", self._c.find({"_id": {"$not": {"$regex": "^@"}}}).to_list(None))
        return sorted((_version(d) for d in docs), key=lambda v: int(v.version.lstrip("v") or 0))

    async def update(self, version: str, **fields: Any) -> None:
        await self._call("update", self._c.update_one({"_id": version}, {"$set": fields}))

    async def active_version(self) -> str | None:
        doc = await self._call("active", self._c.find_one({"_id": ACTIVE}))
        return None if doc is None else str(doc["version"])

    async def set_active(self, version: str, previous: str | None) -> None:
        """The switch: one write names the new active version; the statuses follow (informational)."""
        now = dt.datetime.now(dt.UTC)
        await self._call("switch", self._c.update_one(
            {"_id": ACTIVE}, {"$set": {"version": version, "since": now}}, upsert=True))  # fmt: skip
        await self.update(version, status=VersionStatus.ACTIVE, activated_at=now, refused=None)
        if previous and previous != version:
            await self.update(previous, status=VersionStatus.CANDIDATE, current_until=now)

    async def ensure_initial(self, manifest: Manifest, repository: Path, checkpoint: Path | None) -> ModelVersion:
        """The active version, registering the configured model repository as the first one when the registry
        is empty (the model the stack served before the registry existed, with the configured collection). The
        base version is whatever the configured repository holds: pointing the settings at another export, or
        exporting again in place, changes it (the export + ``reindex`` flow, which the collection's model stamp
        guards).
        ``repository``: resolved; ``checkpoint``: the folder the manifest was exported from, if on this machine."""
        active = await self.active_version()
        if active is None:
            version = ModelVersion.of("v1", manifest, repository, checkpoint,
                                      status=VersionStatus.ACTIVE, base=True, built=True)  # fmt: skip
            try:
                await self._c.insert_one(_doc(version))
                await self._call("counter", self._c.update_one({"_id": COUNTER}, {"$max": {"n": 1}}, upsert=True))
                await self._call(
                    "active",
                    self._c.update_one(
                        {"_id": ACTIVE}, {"$setOnInsert": {"version": "v1", "since": version.created}}, upsert=True
                    ),
                )
            except DuplicateKeyError:
                pass  # another process registered it first
            except PyMongoError as exc:
                raise StoreUnavailable(f"MongoDB: model registry: {exc}") from exc
            active = await self.active_version() or "v1"
        base = await self._call("base", self._c.find_one({"base": True}))
        if base is not None and (base["repository"] != str(repository) or base["fingerprint"] != manifest.fingerprint):
            fresh = ModelVersion.of(base["_id"], manifest, repository, checkpoint)
            await self.update(base["_id"], name=fresh.name, source=fresh.source, fingerprint=fresh.fingerprint,
                              dim=fresh.dim, precisions=fresh.precisions, gate=fresh.gate,
                              repository=fresh.repository, checkpoint=fresh.checkpoint)  # fmt: skip
        current = await self.get(active)
        return current


def checkpoint_of(manifest: Manifest) -> Path | None:
    """The checkpoint a manifest was exported from, when it is a folder on this machine (a hub id is not)."""
    folder = Path(manifest.source)
    return folder.resolve() if (folder / "config.json").is_file() else None
