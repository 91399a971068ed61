"""One settings class for the whole stack.

Environment variables use the prefix ``PIPELINE__`` and ``__`` between sections, e.g.
``PIPELINE__ENCODER__PRECISION=fp16`` or ``PIPELINE__LIMITS__MAX_IMAGE_PIXELS=50000000``; a ``.env`` file in the
working directory is read too. Build it once at start-up (``Settings()``) and pass it down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.errors import InvalidInput
from pipeline.lifecycle.settings import ModelsSettings
from pipeline.stores.index_config import IndexSpec
from pipeline.types import Precision


class EncoderSettings(BaseModel):
    model_repository: Path = Path("model_repository")
    # None: the best exported variant for the backend (int8 in-process on CPU, fp16 on a GPU server).
    precision: Precision | None = None
    # Model calls that may run at once: a text and a photo side by side (each tower's calls stay in order), so a
    # query's text never waits behind a photo's 30 ms. 2 x 1 thread on 2 cores: 1.31x the mixed load's
    # requests/s of 1 x 2 threads, at 1.3-1.4x the latency of one encoding alone (README, Performance).
    infer_workers: int = Field(default=2, ge=1, le=64)
    # onnxruntime threads inside one inference; 0: the machine's cores divided among the infer workers.
    intra_op_threads: int = Field(default=0, ge=0)

    def threads_per_call(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.infer_workers)

    # Largest batch sent to the model at once; bigger requests are split.
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    # How long the micro-batcher waits for more concurrent requests before running a batch.
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    # Merge concurrent callers' requests into one model call. INT8 variants (dynamic quantisation, which scales
    # activations over the whole batch) always run one input per model call, so a vector never depends on its
    # batch-mates; merging only queues them together there.
    cross_request_batching: bool = True
    # Serve a precision even when the export's accuracy gate refused it.
    force_precision: bool = False
    # onnxruntime execution providers in order of preference; unavailable ones are skipped.
    providers: list[str] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # The text tower for queries when the model has a multilingual one (export --text-model): "auto" picks it
    # for every query of a non-English catalog, for text with non-Latin letters and for Latin-script text in one
    # of query_languages; "multilingual" for every query, "clip" never (pipeline.text_towers).
    text_tower: Literal["clip", "multilingual", "auto"] = "auto"
    # The language of the catalog's titles (ISO 639-1): not "en", every query goes to the multilingual tower.
    catalog_language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    # Languages the shoppers type besides English (ISO 639-1: "fr,es" or ["fr", "es"]): Latin-script queries told to
    # be one of them (langid, restricted to English and these) go to the multilingual tower. Empty: no detection.
    query_languages: Annotated[list[str], NoDecode] = []
    # How sure the language guess must be to send a Latin-script query to the multilingual tower.
    language_confidence: float = Field(default=0.9, ge=0.5, le=1.0)

    @field_validator("catalog_language", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("query_languages", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        """From the environment: a JSON list, or codes separated by commas ("" is none)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [code.strip() for code in text.split(",") if code.strip()]
        return value

    @field_validator("query_languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        if value:
            from pipeline.text_towers import known_languages

            unknown = sorted({v.lower() for v in value} - known_languages())
            if unknown:
                raise ValueError(f"no language model for {unknown}: ISO 639-1 codes such as fr, es, de")
        return [v.lower() for v in value]


class LimitsSettings(BaseModel):
    """Guards on user input, checked before any expensive work."""

    # Decompression-bomb guard: width * height of a decoded image.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    # A 10000x10 strip would be resized to 224000x224 before the crop: refuse such shapes up front.
    max_aspect_ratio: float = Field(default=20.0, ge=1.0)
    # Longer texts are refused; anything under this is tokenised and truncated to the model's 77 tokens.
    max_text_chars: int = Field(default=20_000, ge=1)
    # Pillow decoders an image may reach: the common web formats. Exotic decoders (where image-library CVEs
    # live, and which raise odd errors) are never tried; widen the list only on purpose.
    image_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    # A search query or a rank candidate: CLIP reads 77 tokens, so a longer query is a mistake or an attack.
    max_query_chars: int = Field(default=1_000, ge=1)


class TritonSettings(BaseModel):
    # Set (host:8001): every embedding goes through Triton over gRPC instead of in-process.
    url: str | None = None
    # "bytes": ship encoded images / UTF-8 text to the server-side preprocessing ensembles (small requests);
    # "tensors": preprocess here and ship FP32 pixels / token ids.
    send: Literal["bytes", "tensors"] = "bytes"
    timeout_s: float = Field(default=10.0, gt=0)  # per request
    retries: int = Field(default=3, ge=0)  # on UNAVAILABLE, with exponential backoff
    backoff_s: float = Field(default=0.1, ge=0)
    # When Triton is unreachable, answer in-process instead (logged once per switch), and retry Triton
    # after the cooldown.
    fallback: bool = False
    fallback_cooldown_s: float = Field(default=30.0, ge=0)
    # A folder the server also serves as a model repository (a second ``--model-repository``, in explicit
    # model-control mode), writable here: model versions activated later are written there and loaded by name.
    # Unset: only the version in the server's own repository can be served.
    versions_repository: Path | None = None


class QdrantSettings(BaseModel):
    # Unset: Qdrant Edge in-process under ``path``. Set (http://host:6333): a Qdrant server or cluster.
    url: str | None = None
    api_key: SecretStr | None = None
    path: Path = Path("data/qdrant")
    collection: str = "products"  # the alias (server) or pointer (Edge) name
    timeout_s: float = Field(default=10.0, gt=0)
    # Points fetched per result slot before grouping per product (products have several images).
    overfetch: int = Field(default=4, ge=1, le=50)
    # Server only (Edge has no shards): shards of each new collection, spread over the cluster's nodes.
    shard_number: int = Field(default=1, ge=1)
    # Server only: how many nodes keep a copy of each shard (2 or more survives losing a node).
    replication_factor: int = Field(default=1, ge=1)


class IndexSettings(BaseModel):
    """How new vector collections are indexed (``PIPELINE__INDEX__...``; defaults: :class:`IndexSpec`'s), on
    Qdrant Edge and on a server alike. A collection keeps what it was built with: a change applies through a
    re-index (``python -m pipeline reindex``, a job), and ``status`` says when the live collection differs."""

    # Segments with fewer vectors per space than this are searched exactly (two spaces at 10k: ~2.1-2.7 ms here,
    # 1.2 ms in a graph); larger ones get an HNSW graph. Also the filtered-search cut-off: a filter matching fewer
    # points scans them.
    exact_below: int = Field(default=IndexSpec.exact_below, ge=1)
    m: int = Field(default=IndexSpec.m, ge=4, le=128)  # graph edges per node: more = better recall, more memory
    ef_construct: int = Field(default=IndexSpec.ef_construct, ge=4, le=4096)
    ef: int = Field(default=IndexSpec.ef, ge=1, le=4096)  # candidates per search: more = better recall, slower
    # Under a filter (category, price, an exclusion list): the walk must go past neighbours the filter drops.
    ef_filtered: int = Field(default=IndexSpec.ef_filtered, ge=1, le=4096)
    # "int8": a scalar INT8 copy of every vector in RAM is searched first (4x less memory than FP32) and the
    # best oversampling x limit candidates are rescored with the originals.
    quantization: Literal["none", "int8"] = IndexSpec.quantization
    rescore: bool = IndexSpec.rescore
    oversampling: float = Field(default=IndexSpec.oversampling, ge=1.0, le=16.0)
    # Original vectors memory-mapped from disk rather than held in RAM (pair it with int8).
    on_disk: bool = IndexSpec.on_disk
    # Qdrant Edge: a bulk job (ingest, sync, embed-all) that left exact_below points or more outside any graph
    # ends with a re-index that builds the graphs (once, in a child process). Not recorded in collections.
    build_after_bulk: bool = True

    def spec(self) -> IndexSpec:
        return IndexSpec(**self.model_dump(exclude={"build_after_bulk"}))


class MongoSettings(BaseModel):
    # Unset: a mongod the stack starts itself on loopback with data under ``data_dir``.
    uri: SecretStr | None = None
    database: str = "product_search"
    # Credentials apart from the URI, so they need no escaping there (a password with '@' or '/' just works).
    # The user is looked up in ``auth_source``, by default the application's own database.
    username: str | None = None
    password: SecretStr | None = None
    auth_source: str | None = None
    data_dir: Path = Path("data/mongo")
    # Client-side timeout for every operation: a dead server costs a query this much, not more.
    timeout_ms: int = Field(default=2000, ge=50)


class CacheSettings(BaseModel):
    max_entries: int = Field(default=10_000, ge=0)  # 0 disables the cache
    ttl_s: float = Field(default=3600.0, gt=0)
    # Product metadata read for results is kept this long (0: always read MongoDB). Writes through this
    # process drop their ids at once; another replica's writes show within this many seconds.
    product_ttl_s: float = Field(default=30.0, ge=0)


class EventSettings(BaseModel):
    queue_size: int = Field(default=10_000, ge=1)  # events beyond this are dropped and counted, never awaited
    batch_size: int = Field(default=200, ge=1)
    flush_timeout_s: float = Field(default=10.0, ge=0)  # at shutdown, how long queued events get to reach MongoDB
    # Events are written at most once per interval (in batches), keeping a write per query off MongoDB.
    flush_interval_s: float = Field(default=0.1, ge=0, le=10)
    # Events older than this are removed by MongoDB (a TTL index on ``ts``); 0 keeps them forever.
    retention_days: float = Field(default=30.0, ge=0)


class SearchSettings(BaseModel):
    default_top_k: int = Field(default=10, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    # How the photo and title rankings of a query become one order (pipeline/fusion.py): "weighted" (mean of
    # the cosines), "dbsf" (Qdrant's distribution-based score fusion) or "rrf" (reciprocal ranks, ``rrf_k``).
    # A hit's score is the fused score the order follows. Measured by ``python -m bench demo-queries``.
    fusion: Literal["weighted", "dbsf", "rrf"] = "weighted"
    rrf_k: int = Field(default=60, ge=1)

    def top_k(self, requested: int | None) -> int:
        """How many results a request gets: its ``top_k``, or the default; refused beyond the service's max."""
        k = self.default_top_k if requested is None else requested
        if not 1 <= k <= self.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self.max_top_k}, got {k}")
        return k


class IngestSettings(BaseModel):
    batch_size: int = Field(default=32, ge=1)
    http_timeout_s: float = Field(default=10.0, gt=0)
    # Largest catalog file an ingest job downloads from a URL, and how long the whole download may take.
    max_catalog_bytes: int = Field(default=2 * 1024**3, ge=1)
    catalog_timeout_s: float = Field(default=600.0, gt=0)
    # Refuse catalog rows with fields the schema does not know (by default they are kept as attributes).
    strict_fields: bool = False
    # How long a product write waits for a re-index of its collection to finish before it is refused (Busy).
    write_wait_s: float = Field(default=30.0, ge=0)
    # A bulk ingest (upsert_stream) fetches and encodes up to this many batches ahead of the one it writes.
    prefetch_batches: int = Field(default=2, ge=0, le=64)
    # Image downloads in flight at once per image host (host:port), across everything ingesting in this process.
    per_host_concurrency: int = Field(default=8, ge=1)
    # Further tries of an image download after a connection error, a 5xx or a 429 (never after other 4xx).
    retries: int = Field(default=3, ge=0)
    # First wait before a retry; it doubles each time (with jitter), at least what a Retry-After header asks.
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # Longest wait between two tries; a Retry-After asking for more fails the image at once.
    retry_max_wait_s: float = Field(default=30.0, ge=0)


class SourceSettings(BaseModel):
    """The catalog's system of record, read by ``sync`` jobs and ``POST /v1/products/{id}/refresh`` (and by an
    ``ingest`` job that names no file). ``type`` unset: no source is configured."""

    type: Literal["sql", "mongo"] | None = None
    # Its products and sync watermark are kept under this name, so editing the query keeps them.
    name: str = "catalog"
    # SQL: a SQLAlchemy URL as users type it (postgresql://user@host/db, mysql://..., sqlite:///catalog.db).
    # MongoDB: a mongodb:// URI.
    url: SecretStr | None = None
    # SQL: a SELECT returning one row per product. Its columns are product fields (or named through ``mapping``).
    query: str | None = None
    # SQL: how to read one product (a named parameter ``:id``). Unset: ``query`` filtered on the id column.
    by_id_query: str | None = None
    # MongoDB: database, collection and a filter (JSON) on the documents that are products.
    database: str | None = None
    collection: str | None = None
    filter: dict[str, Any] = {}
    # Product field -> column (or document field) when their names differ, e.g. {"id": "sku", "name": "title"}.
    mapping: dict[str, str] = {}
    # A column (field) with each row's last change: ``sync`` then reads only rows changed since the last sync.
    updated_at: str | None = None
    # Relative image references in the source are joined to this folder or http(s) URL (unset: refused).
    image_base: str | None = None
    # How long connecting and each statement may take before the job fails with the driver's message.
    timeout_s: float = Field(default=30.0, gt=0)


class RecommendSettings(BaseModel):
    """Recommendations from shopper events (``/v1/events``, ``/v1/buyers/...``, ``/v1/recommend``)."""

    # How much one event of each type counts in a buyer's vector (and in popularity).
    weights: dict[str, float] = {"view": 1.0, "click": 1.0, "add_to_cart": 5.0, "purchase": 10.0}
    # An event's weight halves every this many days (0: no recency decay).
    half_life_days: float = Field(default=14.0, ge=0)
    # Only a buyer's most recent events count (a buyer with 100,000 events costs what one with this many does).
    max_events: int = Field(default=200, ge=1, le=10_000)
    # Popular products (the fallback for a buyer with no events) are counted over this many days.
    popular_window_days: float = Field(default=30.0, gt=0)
    # Diversified lists (maximal marginal relevance): 1 = relevance only, lower trades relevance for variety.
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)
    # A buyer's vector is kept this long (events sent to this service refresh it at once).
    buyer_cache_s: float = Field(default=60.0, ge=0)
    buyer_cache_entries: int = Field(default=10_000, ge=0)
    # Products whose vectors (one per space, ~4 KB each at 512-d) are kept in memory for buyer vectors; checked
    # against MongoDB's ingest state on every use, so a changed or deleted product is never served stale (0: off).
    vector_cache_entries: int = Field(default=10_000, ge=0)
    # Shopper events older than this are removed by MongoDB (0: kept forever).
    retention_days: float = Field(default=365.0, ge=0)
    # Events stamped further ahead than this (clock skew) are refused.
    max_future_s: float = Field(default=300.0, ge=0)


class JobSettings(BaseModel):
    # "local": jobs run inside the service process (the embedded default). "celery": on Celery workers
    # (``python -m pipeline worker``) through a Redis broker; the service only queues them.
    runner: Literal["local", "celery"] = "local"
    broker_url: SecretStr | None = None  # redis://host:6379/0 (required with the celery runner)
    # Celery workers: how often a running worker looks for jobs whose process died, and for queued jobs whose
    # message Redis lost (queued this long while Redis holds no message at all: published again).
    recover_s: float = Field(default=30.0, gt=0)
    lost_message_s: float = Field(default=60.0, gt=0)


class ApiSettings(BaseModel):
    """The HTTP service (``python -m pipeline serve``) and how its clients (the page, the CLI) reach it."""

    # Where clients find the service. Unset: the CLI looks for the service file beside the data and otherwise
    # opens the stack in-process; the page falls back to http://127.0.0.1:8000.
    url: str | None = None
    # The key a client sends (X-API-Key). Unset: on the same machine, the token from the service file.
    key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The file the running service writes (URL, pid, a local admin token; mode 0600), like Jupyter's runtime
    # file. Unset: ``service.json`` beside the data (the parent of the Qdrant Edge folder).
    service_file: Path | None = None
    # Production needs TLS (these two) or an explicit statement that a proxy terminates it.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    behind_proxy: bool = False
    # How long a checked key is trusted without asking MongoDB again (revocations through this service take
    # effect at once; through another replica within this many seconds).
    key_cache_s: float = Field(default=5.0, ge=0)
    # ``url`` fields (image search, rank, product images) may name private or loopback hosts only if set.
    allow_private_urls: bool = False
    # Largest request body; image uploads are held to the image limit instead. Checked before reading.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Seconds a request may run in the service before it is stopped with a 503 (below the clients' wait, so a
    # client hears why instead of timing out while the work goes on).
    request_timeout_s: float = Field(default=60.0, gt=0)
    # Seconds a client waits for an answer.
    client_timeout_s: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PIPELINE__",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    # "production" refuses to start without an API key and without TLS (or behind_proxy), and drops the
    # development-only routes (/v1/dev/...).
    environment: Literal["development", "production"] = "development"
    encoder: EncoderSettings = EncoderSettings()
    triton: TritonSettings = TritonSettings()
    limits: LimitsSettings = LimitsSettings()
    qdrant: QdrantSettings = QdrantSettings()
    index: IndexSettings = IndexSettings()
    mongo: MongoSettings = MongoSettings()
    cache: CacheSettings = CacheSettings()
    events: EventSettings = EventSettings()
    search: SearchSettings = SearchSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    source: SourceSettings = SourceSettings()
    jobs: JobSettings = JobSettings()
    recommend: RecommendSettings = RecommendSettings()
    models: ModelsSettings = ModelsSettings()

    def models_root(self) -> Path:
        """Where model versions keep their files: the setting, or ``models/`` beside the data."""
        return self.models.root or self.qdrant.path.parent / "models"

    def service_file(self) -> Path:
        """Where the running service announces itself: the setting, or ``service.json`` beside the data."""
        return self.api.service_file or self.qdrant.path.parent / "service.json"
