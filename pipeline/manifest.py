"""The model manifest: what `export` wrote, read by every encoder and store that must agree on the model.

It lives at ``<model_repository>/manifest.json``. The fingerprint (a hash of the FP32 ONNX files, which every
other precision is derived from) names the model: vectors made with one fingerprint never mix with another's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.errors import ModelError
from pipeline.types import Modality, Precision

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

TEXT_MODEL = "clip_text"
IMAGE_MODEL = "clip_visual"
# The tensor contract (ARCHITECTURE.md): fixed names, L2-normalised outputs.
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_embeds"
IMAGE_INPUT = "pixel_values"
IMAGE_OUTPUT = "image_embeds"


class TensorSpec(BaseModel):
    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: list[int]  # -1 for a dynamic axis


class VariantQuality(BaseModel):
    """The export gate's verdict on a reduced-precision variant, with the figures it was based on."""

    servable: bool
    reasons: list[str] = []
    figures: dict[str, float] = {}
    calibration: str = ""
    min_cosine: float = 0.0
    min_overlap: float = 0.0


class VariantSpec(BaseModel):
    precision: Precision
    file: str  # relative to the repository root
    sha256: str
    size_bytes: int
    triton_version: int
    quality: VariantQuality | None = None  # measured for INT8 by the export gate; None: not gated


class ModelSpec(BaseModel):
    name: str  # Triton model name
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[Precision, VariantSpec]


class ImageSpec(BaseModel):
    size: int = 224  # shortest side after resize, and the square crop
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: str = "bicubic"


class TextSpec(BaseModel):
    tokenizer_file: str = TOKENIZER_FILE
    max_length: int = 77
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    source: str
    source_digest: str
    dim: int
    fingerprint: str
    image: ImageSpec
    text: TextSpec
    models: dict[Modality, ModelSpec]
    exporter: dict[str, str]

    @property
    def name(self) -> str:
        """A short human name: the source's last path part plus the fingerprint's start."""
        return f"{Path(self.source).name or self.source}@{self.fingerprint[:12]}"

    def precisions(self) -> set[Precision]:
        """Precisions exported for both towers."""
        return set(self.models[Modality.TEXT].variants) & set(self.models[Modality.IMAGE].variants)

    def servable(self, precision: Precision) -> VariantQuality | None:
        """The gate's verdict when it refused ``precision`` (None when servable or not gated)."""
        for spec in self.models.values():
            variant = spec.variants.get(precision)
            if variant is not None and variant.quality is not None and not variant.quality.servable:
                return variant.quality
        return None

    def check_servable(self, precision: Precision, force: bool = False) -> None:
        """Raise ModelError when the export gate refused ``precision`` (unless ``force``)."""
        refused = self.servable(precision)
        if refused is not None and not force:
            raise ModelError(
                f"the {precision} variant failed the export's accuracy gate ({'; '.join(refused.reasons)}); "
                f"serve another precision, re-export with a better calibration set, or set "
                f"PIPELINE__ENCODER__FORCE_PRECISION=true to use it anyway"
            )

    def variant(self, modality: Modality, precision: Precision) -> VariantSpec:
        variants = self.models[modality].variants
        if precision not in variants:
            have = ", ".join(sorted(variants)) or "none"
            raise ModelError(
                f"the model repository has no {precision} variant of the {modality} model (exported: {have}); "
                f"run `python -m pipeline export --precision {precision}`"
            )
        return variants[precision]

    def save(self, repository: Path) -> None:
        (repository / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")


def load_manifest(repository: Path) -> Manifest:
    """Read ``<repository>/manifest.json``; raise ModelError with the path when missing or malformed."""
    path = Path(repository) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{path} not found: export a model first (`python -m pipeline export --model SRC`)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelError(f"{path} is not a valid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ModelError(f"{path} has format {manifest.format_version}; this code reads {FORMAT_VERSION}")
    return manifest


def verify_model_file(repository: Path, variant: VariantSpec) -> Path:
    """The path of ``variant``'s file under ``repository``, after checking its size and sha256 against the manifest.

    Raises ModelError naming the file when it is missing, truncated or altered (a copy cut short, a disk fault,
    a file from another export), so a loader never hands onnxruntime a file the manifest does not describe.
    """
    path = Path(repository) / variant.file
    again = "re-export the model (`python -m pipeline export`)"
    try:
        size = path.stat().st_size
        digest = sha256_file(path) if size == variant.size_bytes else ""
    except OSError as exc:
        raise ModelError(f"{path}: the {variant.precision} model file cannot be read ({exc}); {again}") from exc
    if size != variant.size_bytes:
        raise ModelError(
            f"{path}: {size} bytes where the manifest recorded {variant.size_bytes} (truncated or replaced); {again}"
        )
    if digest != variant.sha256:
        raise ModelError(
            f"{path}: sha256 {digest[:12]}… differs from the manifest's {variant.sha256[:12]}… (corrupt or "
            f"replaced); {again}"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
