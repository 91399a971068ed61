"""How a collection's vector spaces are indexed: one description, read by both Qdrant adapters.

A collection is created with the index settings of its time (``PIPELINE__INDEX__...``) and records them; the
settings only ever apply to new collections, so changing them is a re-index (a job), never a silent mix.
Pure: the adapters turn :class:`IndexSpec` into their engine's objects.

Sizes: Qdrant's thresholds are in KB of vectors per segment; settings speak in vectors (what a user counts),
converted with the collection's dimension.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Quantization = Literal["none", "int8"]


@dataclass(frozen=True)
class IndexSpec:
    """What one collection uses. ``exact_below``: a segment with fewer vectors per space is searched by a scan
    (no graph); above it an HNSW graph (``m``, ``ef_construct``) is built and searched with ``ef``.
    ``quantization="int8"``: a scalar INT8 copy of every vector, kept in RAM, is searched first and the best
    ``oversampling`` × limit candidates are rescored with the original vectors (``rescore``). ``on_disk``: the
    original vectors are memory-mapped from disk instead of held in RAM (with INT8, only rescoring reads them)."""

    exact_below: int = 10_000  # Qdrant's own default indexing threshold (20,000 KB) at 512 dimensions
    m: int = 16
    ef_construct: int = 100
    ef: int = 128
    ef_filtered: int = 512
    quantization: Quantization = "none"
    rescore: bool = True
    oversampling: float = 2.0
    on_disk: bool = False

    def threshold_kb(self, dim: int) -> int:
        """``exact_below`` vectors of ``dim`` FP32 values, in Qdrant's unit (KB, at least 1)."""
        return max(1, self.exact_below * dim * 4 // 1024)

    def search_ef(self, filtered: bool) -> int:
        return self.ef_filtered if filtered else self.ef

    def __post_init__(self) -> None:
        if self.quantization not in ("none", "int8"):  # e.g. recorded by a newer version: never guess
            raise ValueError(f"unknown quantization {self.quantization!r}")

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> IndexSpec | None:
        """What a collection recorded; None for one created before index settings existed (a plain scan)."""
        if not record:
            return None
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def describe(self) -> str:
        graph = (f"HNSW m={self.m} ef_construct={self.ef_construct} ef={self.ef} (filtered {self.ef_filtered}) "
                 f"from {self.exact_below:,} vectors")  # fmt: skip
        quant = ""
        if self.quantization == "int8":
            quant = f", INT8 in RAM + rescore ×{self.oversampling:g}" if self.rescore else ", INT8 in RAM (no rescore)"
        disk = ", originals on disk" if self.on_disk else ""
        return graph + quant + disk


def memory_estimate(points: int, spaces: int, dim: int, spec: IndexSpec | None) -> dict[str, int]:
    """Bytes the vectors of ``points`` points (``spaces`` named vectors each) take in RAM and on disk under
    ``spec``: originals (FP32), the INT8 copy, and the HNSW links (``m`` × 2 on layer 0, 4-byte ids). An estimate
    from the layout, not a reading: the engine adds segment and payload overheads on top."""
    vectors = points * spaces
    original = vectors * dim * 4
    quantized = vectors * dim if spec is not None and spec.quantization == "int8" else 0
    graph = vectors * (spec.m * 2) * 4 if spec is not None and points >= spec.exact_below else 0
    on_disk = spec is not None and spec.on_disk
    return {
        "vectors_ram": 0 if on_disk else original,
        "vectors_disk": original,
        "quantized_ram": quantized,
        "graph": graph,
        "total_ram": (0 if on_disk else original) + quantized + graph,
    }
