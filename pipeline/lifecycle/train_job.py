"""The ``train`` job: fine-tune a version's checkpoint on the catalog and on shopper clicks, export it (with the
INT8 gate) and register it as a candidate version; with ``activate``, go on to its shadow build, validation
and switch. Training and export run in child processes (``python -m pipeline train`` / ``export``), so the
service's event loop and its queries never wait on them; a cancel stops the child."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.catalog import is_url
from pipeline.errors import InvalidInput, ModelError
from pipeline.jobs.context import JobContext
from pipeline.lifecycle.activate import Refused, activate
from pipeline.lifecycle.pairs import click_pairs, held_out, query_key, title_of
from pipeline.lifecycle.registry import ModelVersion
from pipeline.manifest import load_manifest
from pipeline.schemas import Product

if TYPE_CHECKING:
    from pipeline.jobs.model import TrainParams
    from pipeline.stack import Stack

_EPOCH = re.compile(r"epoch (\d+)/(\d+)")


async def _local_image(stack: Stack, ref: str, folder: Path) -> str | None:
    """A file the trainer can read for image ``ref`` (a URL is fetched into ``folder``); None when unreadable."""
    if not is_url(ref):
        return ref if await asyncio.to_thread(Path(ref).is_file) else None
    path = folder / (hashlib.sha256(ref.encode()).hexdigest()[:24] + ".img")
    if not await asyncio.to_thread(path.is_file):
        try:
            data = await stack.ingest.fetcher.fetch(ref, None)
        except InvalidInput:
            return None
        await asyncio.to_thread(path.write_bytes, data)
    return str(path)


async def write_pairs(stack: Stack, folder: Path, use_catalog: bool, use_clicks: bool) -> dict[str, int]:
    """The pairs file of a training run: catalog pairs of the products not held out (every image), click pairs
    of the queries not held out (the skipped results' first images as negatives), and up to 256 held-out catalog
    pairs for the trainer's before/after figures."""
    every = stack.settings.models.heldout_every
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    counts = {"catalog": 0, "clicks": 0, "heldout": 0, "unreadable": 0}
    first_image: dict[str, str] = {}

    async def add(product: Product, split: str) -> None:
        for ref in product.images:
            path = await _local_image(stack, ref, images)
            if path is None:
                counts["unreadable"] += 1
                continue
            first_image.setdefault(product.id, path)
            lines.append({"image": path, "text": title_of(product), "category": product.category or "",
                          "color": product.color or "", "kind": "catalog", "split": split})  # fmt: skip
            counts["catalog" if split == "train" else "heldout"] += 1
            if split == "heldout":
                return  # one image per held-out product

    async for product in stack.mongo.iter_products():
        if held_out(product.id, every):
            if counts["heldout"] < 256:
                await add(product, "heldout")
        elif use_catalog:
            await add(product, "train")
    if use_clicks:
        clicks = [c for c in await click_pairs(stack.mongo)
                  if not held_out(query_key(c.text), every) and not held_out(c.product_id, every)]  # fmt: skip
        wanted = {c.product_id for c in clicks} | {p for c in clicks for p in c.skipped}
        found = await stack.mongo.get_products([i for i in wanted if i not in first_image])
        for pid, product in found.items():
            if product.images and (path := await _local_image(stack, product.images[0], images)):
                first_image[pid] = path
        for c in clicks:
            if c.product_id in first_image:
                negatives = [first_image[p] for p in c.skipped if p in first_image]
                lines.append({"image": first_image[c.product_id], "text": c.text, "kind": "click",
                              "negatives": negatives, "split": "train"})  # fmt: skip
                counts["clicks"] += 1
    body = "".join(json.dumps(line) + "\n" for line in lines)
    await asyncio.to_thread((folder / "pairs.jsonl").write_text, body)
    return counts


async def _run(ctx: JobContext, args: list[str], log: Path, step: str, done: int, total: int) -> None:
    """A child ``python -m pipeline ...``; its output goes to ``log``; progress from its epoch lines; a cancel
    (seen at each report) kills it."""
    fh = await asyncio.to_thread(open, log, "ab")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pipeline", *args, stdout=fh,
                                                stderr=asyncio.subprocess.STDOUT)  # fmt: skip
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
            text = await asyncio.to_thread(log.read_text, errors="replace")
            epochs = _EPOCH.findall(text)
            at = done + (int(epochs[-1][0]) if epochs and step == "train" else 0)
            await ctx.report(at, total, {"step": step}, {}, [])
            if proc.returncode is not None:
                break
        if proc.returncode != 0:
            tail = " ".join(text.strip().splitlines()[-3:])[-400:]
            raise ModelError(f"{step} failed (exit {proc.returncode}): {tail} (log: {log})")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(fh.close)


async def run_train(ctx: JobContext, p: TrainParams) -> dict[str, Any]:
    stack, settings = ctx.stack, ctx.stack.settings
    registry = stack.registry
    await stack.follow()  # the active version as the registry says (a worker may not have heard of a switch)
    base = await registry.get(p.base) if p.base else stack.gen.version
    checkpoint = p.checkpoint or base.checkpoint
    if not checkpoint or not await asyncio.to_thread((Path(checkpoint) / "config.json").is_file):
        raise InvalidInput(f"{base.version} has no trainable checkpoint on this machine (exported from "
                           f"{base.source!r}): name one with params.checkpoint (a save_pretrained folder)")  # fmt: skip
    version = await registry.next_version()
    folder = settings.models_root() / version
    work = folder / "train"
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    epochs = p.epochs or settings.models.epochs
    total = epochs + 2  # epochs, then the export, then the registration
    ctx.begin(0)
    try:
        counts = await write_pairs(stack, work, p.catalog, p.clicks)
        pairs = counts["catalog"] + counts["clicks"]
        if pairs < settings.models.min_pairs:
            raise InvalidInput(f"{pairs} training pairs ({counts['catalog']} from the catalog, {counts['clicks']} "
                               f"from clicks): a training job needs at least {settings.models.min_pairs} "
                               "(PIPELINE__MODELS__MIN_PAIRS)")  # fmt: skip
        await ctx.report(0, total, {"step": "train", "pairs": counts}, {}, [])
        args = ["train", "--model", checkpoint, "--pairs", str(work / "pairs.jsonl"), "--out",
                str(folder / "checkpoint"), "--epochs", str(epochs),
                "--batch-size", str(p.batch_size or settings.models.batch_size)]  # fmt: skip
        lr = p.lr or settings.models.lr
        if lr:
            args += ["--lr", str(lr)]
        await _run(ctx, args, work / "train.log", "train", 0, total)
        export = ["export", "--model", str(folder / "checkpoint"), "--out", str(folder / "repository")]
        for precision in dict.fromkeys(["fp32", *map(str, settings.models.precisions)]):
            export += ["--precision", precision]
        await _run(ctx, export, work / "export.log", "export", epochs, total)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    manifest = await asyncio.to_thread(load_manifest, folder / "repository")
    report = json.loads(await asyncio.to_thread((folder / "checkpoint" / "train_report.json").read_text))
    record = ModelVersion.of(version, manifest, (folder / "repository").resolve(), (folder / "checkpoint").resolve(),
                             parent=base.version, train={"pairs": counts, "epochs": epochs, "job": ctx.job.id,
                                                         "before": report["before"], "after": report["after"],
                                                         "seconds": report["seconds"]})  # fmt: skip
    await registry.add(record)
    await ctx.report(total, total, {"step": "registered", "version": version}, {}, [])
    out: dict[str, Any] = {"version": version, "pairs": counts, "before": report["before"], "after": report["after"]}
    if p.activate:
        try:
            out["activation"] = await activate(stack, version, p.force)
        except Refused as exc:  # the job fails, saying which version it made (registered, figures kept)
            raise Refused(f"{version} was trained and registered, but its activation was refused: {exc}") from None
    return out


async def run_activate(ctx: JobContext, version: str, force: bool) -> dict[str, Any]:
    ctx.begin(0)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Future[None]] = set()

    def progress(done: int, total: int | None) -> None:
        task = asyncio.ensure_future(ctx.report(done, total, {"step": "build"}, {}, []), loop=loop)
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        return await activate(ctx.stack, version, force, progress)
    finally:
        await asyncio.gather(*pending, return_exceptions=True)
