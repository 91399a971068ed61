"""Activating a model version: build its generation in the background, validate it, switch with no downtime.

A candidate never built: its collection is filled from every product in MongoDB with its model (a shadow
build, through the collection's own re-index path, so the index is built as the settings say) while the
active generation keeps serving and taking writes; then both are measured on the same held-out queries
(``validate.compare``) and a candidate worse by more than ``models.max_regression`` is refused unless forced.
A version that served before (a rollback) is only caught up. Catching up: products written since the build
started (or since the version stopped serving) are embedded again, products deleted meanwhile removed; once
without the write lock, then under it for the last few, and the switch happens under it too, so no write is
lost between the two generations. A failure or crash before the switch leaves the active generation as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import Busy, InvalidInput, ModelError
from pipeline.lifecycle.generation import Generation, create_generation_index
from pipeline.lifecycle.registry import ModelVersion, VersionStatus
from pipeline.lifecycle.validate import compare
from pipeline.manifest import load_manifest
from pipeline.schemas import Product
from pipeline.stores.vectors import ModelStamp, VectorIndex, VectorPoint, payload_of

if TYPE_CHECKING:
    from pipeline.stack import Stack

log = logging.getLogger(__name__)
Progress = Callable[[int, int | None], None]
MARGIN = dt.timedelta(seconds=5)  # clock skew between writers; catching up a product twice is harmless


class Refused(InvalidInput):
    """The candidate is worse than the active model on held-out queries (figures kept in the registry)."""


async def _switch(stack: Stack, gen: Generation, current: Generation, left_out: list[str]) -> None:
    """Under the exclusive write lock: the lock document first (what writers follow), the registry (what the
    services' polls follow), the ingest state, then this process. A failure midway puts the first two back."""
    lock, registry = stack.ingest.lock, stack.registry
    await lock.set_generation(gen.name)
    try:
        await registry.set_active(gen.name, current.name)
        await stack.mongo.restamp(gen.encoder.info.fingerprint)
        if left_out:  # not in the new collection: not indexed (a later ingest embeds them again)
            await stack.mongo.mark_unindexed(sorted(set(left_out)))
    except BaseException:
        with contextlib.suppress(Exception):
            await lock.set_generation(current.name)
            await registry.set_active(current.name, gen.name)
        raise
    stack.switch(gen)


def _points(product: Product, images: Any, text: Any) -> list[VectorPoint]:
    return [VectorPoint(product.id, i, images[i], text, payload_of(product, i)) for i in range(len(images))]


async def _embed_into(gen: Generation, index: VectorIndex, products: list[Product]) -> tuple[int, list[str]]:
    """Embed ``products`` with ``gen``'s model into ``index``; returns (written, ids left out)."""
    encoded, failed = await gen.vectors.encode(products)
    if encoded:
        await index.upsert([pt for p, img, txt in encoded for pt in _points(p, img, txt)])
        for product, _, _ in encoded:  # a product that lost images keeps no stale points
            await index.delete_products([product.id], from_image=len(product.images))
    return len(encoded), [p.id for p, _ in failed]


async def shadow_build(stack: Stack, gen: Generation, progress: Progress) -> dict[str, Any]:
    total = (await stack.mongo.counts())["products"]
    size = stack.settings.ingest.batch_size
    done, written, left_out = 0, 0, []
    progress(0, total)
    async with gen.index.rebuild(gen.stamp) as staged:
        batch: list[Product] = []
        async for product in stack.mongo.iter_products():
            batch.append(product)
            if len(batch) >= size:
                n, failed = await _embed_into(gen, staged, batch)
                written, done = written + n, done + len(batch)
                left_out += failed
                progress(done, total)
                batch = []
        if batch:
            n, failed = await _embed_into(gen, staged, batch)
            written, done = written + n, done + len(batch)
            left_out += failed
            progress(done, total)
    return {"embedded": written, "left_out": left_out}


async def catch_up(stack: Stack, gen: Generation, since: dt.datetime, left_out: list[str]) -> dict[str, int]:
    """Bring ``gen``'s collection up to MongoDB: what was written since ``since``, and what was deleted.
    Products whose images fail now are removed from it and added to ``left_out``."""
    changed = await stack.mongo.written_since(since - MARGIN)
    written, failed = 0, list[str]()
    size = stack.settings.ingest.batch_size
    for first in range(0, len(changed), size):
        n, bad = await _embed_into(gen, gen.index, changed[first : first + size])
        written, failed = written + n, failed + bad
    gone = sorted(await gen.index.product_ids() - await stack.mongo.all_ids())
    if gone:
        await gen.index.delete_products(gone)
    if failed:
        await gen.index.delete_products(failed)
        left_out.extend(failed)
    return {"written": written, "deleted": len(gone), "left_out": len(failed)}


async def activate(stack: Stack, name: str, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Make version ``name`` the active generation. Raises Refused (figures kept) when validation refuses it."""
    report = progress or (lambda _d, _t: None)
    registry = stack.registry
    target = await registry.get(name)
    await stack.follow()  # a process that has not heard of a switch made elsewhere (a worker) catches up first
    current = stack.gen
    if target.version == current.name:
        return {"version": name, "activated": False, "message": f"{name} is already active"}
    gen = await stack.open_version(target)
    try:
        return await _activate(stack, target, gen, current, force, report)
    except BaseException:
        if gen is not stack.gen:  # not switched to: its model and collection need not stay open
            await stack.release(gen)
        raise


async def _activate(stack: Stack, target: ModelVersion, gen: Generation, current: Generation, force: bool,
                    report: Progress) -> dict[str, Any]:  # fmt: skip
    registry, name = stack.registry, target.version
    if gen.encoder.info.fingerprint != target.fingerprint:
        raise ModelError(f"{name}'s files at {target.repository} are not the model the registry recorded "
                         f"(fingerprint {gen.encoder.info.fingerprint[:12]} vs {target.fingerprint[:12]})")  # fmt: skip
    out: dict[str, Any] = {"version": name, "previous": current.name}
    left_out: list[str] = []
    built = await gen.index.info()
    # a collection whose titles another tower embedded (the catalog's language changed since) is built again
    rollback = target.built and target.current_until is not None and built.points > 0 and gen.stamp.matches(built.stamp)
    if rollback:
        since = target.current_until
        assert since is not None
        out["rollback"] = True
    else:
        since = dt.datetime.now(dt.UTC)
        out["build"] = await shadow_build(stack, gen, report)
        left_out += out["build"]["left_out"]
        await registry.update(name, built=True, built_at=dt.datetime.now(dt.UTC))
        figures = await compare(gen, current, stack.mongo, stack.settings)
        out["validation"] = figures
        await registry.update(name, validation=figures, refused=None if force else figures["refused"])
        if figures["refused"] and not force:
            raise Refused(figures["refused"])
    first = dt.datetime.now(dt.UTC)
    out["caught_up"] = [await catch_up(stack, gen, since, left_out)]
    lock = stack.ingest.lock
    async with lock.exclusive(wait_s=stack.settings.models.switch_wait_s):
        out["caught_up"].append(await catch_up(stack, gen, first, left_out))
        async with stack.switching:
            if stack.gen is not current:
                raise Busy(f"the active version changed to {stack.gen.name} while {name} was built: activate again")
            await _switch(stack, gen, current, left_out)
    out["activated"] = True
    log.info("activated %s (previous %s)", name, current.name)
    return out


async def add_version(stack: Stack, repository: Path, checkpoint: Path | None = None) -> ModelVersion:
    """Register an exported repository (``python -m pipeline export``) as a candidate version, in place."""
    try:
        repository = await asyncio.to_thread(Path(repository).resolve)
        manifest = await asyncio.to_thread(load_manifest, repository)
        if checkpoint is not None and not await asyncio.to_thread((Path(checkpoint) / "config.json").is_file):
            raise InvalidInput(f"{checkpoint}: not a checkpoint folder (no config.json)")
    except (ModelError, OSError, ValueError) as exc:  # the caller named it: their input, not the service's state
        raise InvalidInput(f"{str(exc)[:300]}") from None
    for known in await stack.registry.list():
        if known.fingerprint == manifest.fingerprint and known.status is not VersionStatus.RETIRED:
            raise InvalidInput(f"{repository} is the model of {known.version} already (same fingerprint)")
    version = await stack.registry.next_version()
    ckpt = await asyncio.to_thread(Path(checkpoint).resolve) if checkpoint else None
    return await stack.registry.add(ModelVersion.of(version, manifest, repository, ckpt))


async def retire(stack: Stack, name: str) -> ModelVersion:
    """Drop a version's collection (it cannot be rolled back to without a new build); the record stays."""
    target = await stack.registry.get(name)
    if name in (stack.gen.name, await stack.registry.active_version()):
        raise InvalidInput(f"{name} is the active version: activate another one first")
    async with stack.switching:
        return await _retire(stack, target)


async def _retire(stack: Stack, target: ModelVersion) -> ModelVersion:
    name = target.version
    gen = stack.generations.pop(name, None)
    if gen is not None:
        await gen.encoder.aclose()
        await gen.index.drop()
    elif target.built:
        index = create_generation_index(stack.settings, target)
        await index.open(ModelStamp(target.fingerprint, target.dim, target.name))
        await index.drop()
    await stack.registry.update(name, status=VersionStatus.RETIRED, built=False, current_until=None)
    return await stack.registry.get(name)
