"""Products to vectors, for ingestion: each product's images are fetched (``pipeline.image_fetch``: per-host
limit, retries) and encoded, one encoder call per product, so a bad image rejects only its product while the
micro-batcher still batches them all; then the texts of the products that passed, in one call.

A bulk ingest encodes batches before their turn to be written (``encode_ahead``); the batch's turn reuses that
work for each product whose content is still what it was done for (``encode_reusing``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from pipeline.encoders.base import Encoder
from pipeline.errors import InvalidInput
from pipeline.image_fetch import ImageFetcher
from pipeline.schemas import Product

Vectors = tuple[np.ndarray, np.ndarray]  # a product's image vectors [n_images, dim] and its text vector [dim]
# (product, image vectors, text vector) for the products encoded; (product, reason) for those rejected.
Encoded = tuple[list[tuple[Product, np.ndarray, np.ndarray]], list[tuple[Product, str]]]


@dataclass
class Ahead:
    """A batch encoded before its turn: its content hashes then, and for each product encoded, its vectors or
    why it was rejected."""

    hashes: dict[str, str]
    encoded: dict[str, Vectors | str]
    fingerprint: str = ""  # the model that made them (a switch in between makes them useless)


class ProductVectors:
    def __init__(self, encoder: Encoder, fetcher: ImageFetcher) -> None:
        self.encoder, self.fetcher = encoder, fetcher

    async def load(self, product: Product, http: httpx.AsyncClient | None) -> list[bytes]:
        """The bytes of each of the product's images; raises InvalidInput naming the first that fails."""
        return list(await asyncio.gather(*(self.fetcher.fetch(ref, http) for ref in product.images)))

    async def _embed_images(
        self,
        product: Product,
        http: httpx.AsyncClient | None,
        loaded: list[bytes] | None,
        after: asyncio.Task[Ahead] | None,
    ) -> np.ndarray:
        images = loaded if loaded is not None else await self.load(product, http)
        if after is not None:
            await asyncio.wait([after])  # its outcome is its own batch's business
        try:
            return await self.encoder.encode_images(images)
        except InvalidInput as exc:
            # The encoder names the image by position; say which file it was.
            message = str(exc)
            for i, ref in enumerate(product.images):
                message = message.replace(f"image {i}:", f"image {ref}:")
            raise InvalidInput(message) from exc

    async def encode(
        self,
        products: Sequence[Product],
        http: httpx.AsyncClient | None = None,
        loaded: dict[str, list[bytes]] | None = None,
        after: asyncio.Task[Ahead] | None = None,
    ) -> Encoded:
        """Vectors per product; products whose images fail come back with the reason instead. ``loaded``:
        images already fetched, by product id (the others are fetched here). Each product is encoded as soon
        as its images are in (and, given ``after``, that task is done)."""
        loaded = loaded or {}
        image_results = await asyncio.gather(
            *(self._embed_images(p, http, loaded.get(p.id), after) for p in products), return_exceptions=True
        )
        ok, failed = [], []
        for product, result in zip(products, image_results, strict=True):
            if isinstance(result, InvalidInput):
                failed.append((product, str(result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                ok.append((product, result))
        texts = await self.encode_titles([p for p, _ in ok]) if ok else np.zeros((0, 0))
        return [(p, img, texts[i]) for i, (p, img) in enumerate(ok)], failed

    async def encode_titles(self, products: Sequence[Product]) -> np.ndarray:
        """The text-space vectors of ``products`` (their titles), by the tower the catalog's language needs."""
        return await self.encoder.encode_texts([p.embedding_text() for p in products], self.encoder.info.title_tower)

    async def encode_ahead(
        self,
        products: Sequence[Product],
        hashes: dict[str, str],
        http: httpx.AsyncClient | None,
        after: asyncio.Task[Ahead] | None,
    ) -> Ahead:
        """``encode(products)`` ahead of the batch's turn. All images are fetched at once; each product is
        encoded once its images are in and ``after`` (the batch before) is done: batches encode one at a time,
        in order, so the next batch to be written is never kept waiting behind later ones, while one slow image
        holds up only its own product."""
        ok, failed = await self.encode(products, http, after=after)
        encoded: dict[str, Vectors | str] = {p.id: (img, txt) for p, img, txt in ok}
        encoded.update({p.id: reason for p, reason in failed})
        return Ahead(hashes, encoded, self.encoder.info.fingerprint)

    async def encode_reusing(
        self, products: Sequence[Product], hashes: dict[str, str], http: httpx.AsyncClient | None, ahead: Ahead | None
    ) -> Encoded:
        """``encode(products)``, reusing what ``ahead`` holds for a product whose content hash is unchanged (and
        only when this model made it)."""
        if ahead is not None and ahead.fingerprint != self.encoder.info.fingerprint:
            ahead = None
        done = {
            p.id: ahead.encoded[p.id]
            for p in products
            if ahead is not None and p.id in ahead.encoded and ahead.hashes.get(p.id) == hashes[p.id]
        }
        rest = [p for p in products if p.id not in done]
        ok, failed = await self.encode(rest, http) if rest else ([], [])
        for product in products:
            result = done.get(product.id)
            if isinstance(result, str):
                failed.append((product, result))
            elif result is not None:
                ok.append((product, *result))
        return ok, failed
