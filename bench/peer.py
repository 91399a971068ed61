"""The peer for ``python -m bench http``: the search service the way seed projects write it.

FastAPI served by uvicorn (one worker process), PyTorch CLIP eager (``CLIPModel.get_text_features`` /
``get_image_features``, L2-normalised), two FAISS ``IndexFlatIP`` (image vectors, text vectors) and a plain dict
for metadata. No cache, no batching across requests: every request encodes its own query.

The endpoints are plain ``def`` functions, the idiomatic seed-service way: FastAPI runs each one in its
threadpool (anyio's, 40 threads by default), so concurrent requests run the model concurrently in threads,
each inference using torch's own intra-op threads. Auth headers are accepted and ignored. uvicorn's default
access log stays on (one line per request, to the log file the benchmark gives it), as ours logs one JSON line
per request.

Same routes and JSON shapes as ours: ``POST /v1/search/text``, ``POST /v1/search/image`` (multipart ``file``,
optional form ``top_k``), ``GET /v1/products/{id}/similar``, ``GET /health/ready``.

    python -m bench.peer --port 8001 --products 10000 --precision fp32 --checkpoint bench/.cache/vit-b32-random
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, Field

from bench.data import clustered, product


def eager_clip(checkpoint: Path, precision: str) -> Any:
    """PyTorch CLIP eager, as loaded (``fp32``) or with ``quantize_dynamic`` on its Linear layers (``int8``).

    The INT8 one is how seed projects quantise: int8 weights, activation scales computed per call (so, as with
    ONNX dynamic INT8, a vector depends on what else was in its call).
    """
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(checkpoint).eval()
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated, still the seed projects' way
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif precision != "fp32":
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    return model


class PeerSearch:
    """Model, indexes and metadata; the same products and vectors as ``bench.search._fill`` writes to ours."""

    def __init__(self, checkpoint: Path, n: int, precision: str) -> None:
        import faiss
        import torch
        from transformers import CLIPImageProcessorPil, CLIPTokenizer

        self.torch = torch
        model = eager_clip(checkpoint, precision)
        self.model = model
        self.tokenizer = CLIPTokenizer.from_pretrained(checkpoint)
        self.processor = CLIPImageProcessorPil.from_pretrained(checkpoint)
        self.name = f"{Path(checkpoint).name} (torch eager {precision})"
        dim = int(model.config.projection_dim)
        self.ids = [f"p{i:06d}" for i in range(n)]
        self.position = {pid: i for i, pid in enumerate(self.ids)}
        self.meta = {pid: product(i, [f"/bench/{i}.jpg"]).model_dump(mode="json") for i, pid in enumerate(self.ids)}
        self.image_index = faiss.IndexFlatIP(dim)
        self.image_index.add(clustered(n, dim, 1))
        self.text_index = faiss.IndexFlatIP(dim)
        self.text_index.add(clustered(n, dim, 2))

    def _unit(self, out: Any) -> np.ndarray:
        feats = getattr(out, "pooler_output", out)
        return self.torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)

    def encode_text(self, text: str) -> np.ndarray:
        batch = self.tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt")
        with self.torch.inference_mode():
            return self._unit(self.model.get_text_features(**batch))

    def encode_image(self, data: bytes) -> np.ndarray:
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        with self.torch.inference_mode():
            return self._unit(self.model.get_image_features(**self.processor(images=[image], return_tensors="pt")))

    def _hits(self, best: dict[int, tuple[float, str]], top_k: int) -> list[dict[str, Any]]:
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top_k]
        return [
            {
                "id": self.ids[i],
                "score": s,
                "similarity": s,
                "matched": m,
                "image_index": 0 if m == "image" else None,
                "product": self.meta[self.ids[i]],
            }
            for i, (s, m) in ranked
        ]

    def search_text(self, text: str, top_k: int) -> list[dict[str, Any]]:
        """Both indexes, merged per product taking the max similarity."""
        query = self.encode_text(text)
        best: dict[int, tuple[float, str]] = {}
        for index, matched in ((self.image_index, "image"), (self.text_index, "text")):
            scores, positions = index.search(query, top_k)
            for s, i in zip(scores[0], positions[0], strict=True):
                if i >= 0 and (int(i) not in best or float(s) > best[int(i)][0]):
                    best[int(i)] = (float(s), matched)
        return self._hits(best, top_k)

    def search_image(self, data: bytes, top_k: int) -> list[dict[str, Any]]:
        scores, positions = self.image_index.search(self.encode_image(data), top_k)
        return self._hits({int(i): (float(s), "image") for s, i in zip(scores[0], positions[0], strict=True)}, top_k)

    def similar(self, pid: str, top_k: int) -> list[dict[str, Any]] | None:
        pos = self.position.get(pid)
        if pos is None:
            return None
        vector = self.image_index.reconstruct(pos).reshape(1, -1)
        scores, positions = self.image_index.search(vector, top_k + 1)
        best = {int(i): (float(s), "image") for s, i in zip(scores[0], positions[0], strict=True) if i != pos}
        return self._hits(best, top_k)


class TextQuery(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    top_k: int = Field(default=10, ge=1, le=100)


def build_app(search: PeerSearch) -> FastAPI:
    app = FastAPI(title="peer: eager CLIP + FAISS + dict")

    def answer(hits: list[dict[str, Any]], start: float, kind: str) -> dict[str, Any]:
        took = (time.perf_counter() - start) * 1000
        return {"hits": hits, "took_ms": round(took, 2), "cached": False, "model": search.name, "kind": kind}

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/search/text")
    def search_text(query: TextQuery) -> dict[str, Any]:
        start = time.perf_counter()
        return answer(search.search_text(query.text, query.top_k), start, "text")

    @app.post("/v1/search/image")
    def search_image(file: Annotated[UploadFile, File()], top_k: Annotated[int, Form()] = 10) -> dict[str, Any]:
        start = time.perf_counter()
        data = file.file.read()
        try:
            hits = search.search_image(data, top_k)
        except OSError as exc:  # PIL: not an image
            raise HTTPException(status_code=400, detail=f"cannot decode image: {exc}") from exc
        return answer(hits, start, "image")

    @app.get("/v1/products/{pid}/similar")
    def similar(pid: str, top_k: int = 10) -> dict[str, Any]:
        start = time.perf_counter()
        hits = search.similar(pid, top_k)
        if hits is None:
            raise HTTPException(status_code=404, detail=f"unknown product {pid}")
        return answer(hits, start, "product")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--checkpoint", type=Path, required=True)
    args = parser.parse_args()
    app = build_app(PeerSearch(args.checkpoint, args.products, args.precision))
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
