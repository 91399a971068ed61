"""The HTTP client of the service, for the page and the CLI (synchronous: both call it from plain code).

``ServiceClient.discover`` finds a running service: ``PIPELINE__API__URL`` if set, else the service file
beside the data (whose token authenticates its own user on this machine). Every error the service answers
comes back as the same PipelineError class the stack would have raised in-process, so a face shows the
same message either way.
"""

from __future__ import annotations

import base64
import mimetypes
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.catalog import Row, is_url, read_catalog
from pipeline.config import Settings
from pipeline.errors import InvalidInput, NotFound, PipelineError, ServiceUnavailable, from_wire
from pipeline.schemas import IngestReport, Outcome, Product, SearchFilters, SearchResponse
from pipeline.service_file import ServiceFile
from pipeline.wire import WireSearch

DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceClient:
    def __init__(self, url: str, key: str | None, timeout_s: float = 120.0, local: bool = False) -> None:
        self.url = url.rstrip("/")
        self.local = local  # authenticated with the service file's token: may name files on this machine
        headers = {"X-API-Key": key} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    @classmethod
    def discover(cls, settings: Settings, default: str | None = None) -> ServiceClient | None:
        """A client of the running service, or None when none is configured or announced (and no default)."""
        api, found = settings.api, ServiceFile.read(settings.service_file())
        key = api.key.get_secret_value() if api.key else None
        url = api.url or (found.url if found else default)
        if url is None:
            return None
        local = key is None and found is not None and found.url.rstrip("/") == url.rstrip("/")
        return cls(url, found.token if local and found else key, api.client_timeout_s, local)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"the service at {self.url} did not answer ({type(exc).__name__}: {exc})") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                failure = from_wire(str(error["code"]), str(error["message"]))
            except (ValueError, KeyError, TypeError):
                failure = ServiceUnavailable(f"the service at {self.url} answered HTTP {response.status_code}")
            raise failure
        return response.json()

    # --- search --------------------------------------------------------------------------------------------

    @staticmethod
    def _query(top_k: int | None, filters: SearchFilters | None, min_score: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {"top_k": top_k, "min_score": min_score}
        if filters is not None and not filters.is_empty():
            body["filters"] = filters.model_dump(exclude_none=True)
        return {k: v for k, v in body.items() if v is not None}

    def search_text(self, text: str, top_k: int | None = None, filters: SearchFilters | None = None,
                    min_score: float | None = None) -> SearchResponse:  # fmt: skip
        body = {"text": text, **self._query(top_k, filters, min_score)}
        return WireSearch.model_validate(self._call("POST", "/v1/search/text", json=body)).to_response()

    def search_image(self, image: bytes, top_k: int | None = None, filters: SearchFilters | None = None,
                     min_score: float | None = None) -> SearchResponse:  # fmt: skip
        form = {k: (v if isinstance(v, str) else str(v)) for k, v in self._query(top_k, None, min_score).items()}
        if filters is not None and not filters.is_empty():
            form["filters"] = filters.model_dump_json(exclude_none=True)
        files = {"file": ("query", image, "application/octet-stream")}
        return WireSearch.model_validate(self._call("POST", "/v1/search/image", data=form, files=files)).to_response()

    def similar(self, product_id: str, top_k: int | None = None, min_score: float | None = None,
                filters: SearchFilters | None = None) -> SearchResponse:  # fmt: skip
        params = {**self._query(top_k, None, min_score), **(filters.model_dump(exclude_none=True) if filters else {})}
        path = f"/v1/products/{_segment(product_id)}/similar"
        return WireSearch.model_validate(self._call("GET", path, params=params)).to_response()

    # --- catalog -------------------------------------------------------------------------------------------

    def _send(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        """One outcome per row, in order (the service embeds and indexes them before answering)."""
        answer = self._call("POST", "/v1/products/batch", json={"products": rows})
        return [Outcome(r["id"], r["status"], r.get("error")) for r in answer["results"]]

    def _row(self, product: Product) -> dict[str, Any]:
        row = product.model_dump(mode="json")
        if not self.local:  # another machine cannot read our files: send them along
            row["images"] = [ref if is_url(ref) else _data_uri(Path(ref)) for ref in product.images]
        return row

    def ingest(
        self,
        catalog: Path,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        strict: bool = False,
    ) -> IngestReport:
        """The CLI's ingest through the service: rows are read and validated here (bad rows keep their line
        numbers), sent in batches, and the answers tallied into the same report as an in-process ingest."""
        report, start = IngestReport(), time.perf_counter()
        for batch in _batches(read_catalog(catalog, strict), batch_size):
            good = [r for r in batch if r.product is not None]
            report.rejected += [(r.line, r.error or "invalid row") for r in batch if r.product is None]
            sendable, lines = [], []
            for row in good:
                assert row.product is not None
                try:
                    sendable.append(self._row(row.product))
                except PipelineError as exc:  # an image file this machine cannot read: that row only
                    report.rejected.append((row.line, str(exc)))
                    continue
                lines.append(row.line)
            for line, outcome in zip(lines, self._send(sendable) if sendable else [], strict=True):
                if outcome.status == "rejected":
                    report.rejected.append((line, outcome.error or "rejected"))
                else:
                    setattr(report, outcome.status, getattr(report, outcome.status) + 1)
            if progress:
                progress(len(batch))
        report.rejected.sort()
        report.seconds = time.perf_counter() - start
        return report

    def delete(self, product_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """(deleted, unknown) ids, like the in-process delete."""
        deleted, unknown = [], []
        for pid in dict.fromkeys(product_ids):
            try:
                self._call("DELETE", f"/v1/products/{_segment(pid)}")
                deleted.append(pid)
            except NotFound:
                unknown.append(pid)
        return deleted, unknown

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params or None)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, json=body)

    def remove(self, path: str) -> Any:
        return self._call("DELETE", path)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _data_uri(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"image {path}: cannot read ({exc.strerror or exc})") from exc
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
