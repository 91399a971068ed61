"""The model manifest: what `export` wrote, read by every encoder and store that must agree on the model.

It lives at ``<model_repository>/manifest.json``. The fingerprint (a hash of the FP32 ONNX files, which every
other precision is derived from) names the model: vectors made with one fingerprint never mix with another's.

Format 2 records, per variant, the Triton model that serves it (``triton_model``, ``triton_version``): FP32 and
FP16 are versions of the tower's batched model (``clip_text`` / ``clip_visual``), INT8 has a model of its own
(``clip_text_int8`` / ``clip_visual_int8``) without dynamic batching (see ``PER_ITEM``). Format 1 (every
precision a version of the tower's model) is still read: its variants are placed where format 1 put them, and
``Manifest.triton_model`` refuses to serve a per-item precision from there, asking for a re-export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, model_validator

from pipeline.errors import ModelError
from pipeline.types import Modality, Precision

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)

TEXT_MODEL = "clip_text"
MULTILINGUAL_MODEL = "clip_text_multilingual"  # export --text-model
IMAGE_MODEL = "clip_visual"
# The tensor contract (ARCHITECTURE.md): fixed names, L2-normalised outputs.
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_embeds"
IMAGE_INPUT = "pixel_values"
IMAGE_OUTPUT = "image_embeds"
# Precisions whose vectors depend on what else shares a model call: dynamic INT8 computes activation scales over
# the whole input of a call. Each item of these runs alone (in-process, and on Triton in a model of their own
# with no dynamic batching), so the same input always gives the same vector whatever its batch-mates.
PER_ITEM: frozenset[Precision] = frozenset({Precision.INT8})


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


class KernelFile(BaseModel):
    """Another file of the same variant, for CPUs that need other kernels (see :func:`file_for_this_cpu`)."""

    file: str
    sha256: str
    size_bytes: int


class VariantSpec(BaseModel):
    precision: Precision
    file: str  # relative to the repository root
    sha256: str
    size_bytes: int
    # INT8: the same quantisation with unsigned weights, which onnxruntime runs on x86 CPUs without VNNI,
    # where the signed-weight kernel (``file``) saturates. None: one file for every CPU (older exports).
    no_vnni: KernelFile | None = None
    triton_model: str  # the Triton model serving this variant (format 1: the tower's model, filled on read)
    triton_version: int  # its version folder in that model
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


class TextTowerSpec(BaseModel):
    """A second text tower in CLIP's text space (``export --text-model``): its own tokenizer and text settings,
    the same image vectors."""

    source: str
    source_digest: str
    kind: str  # "sentence-transformers" or "m-clip"
    fingerprint: str  # sha256 of its FP32 ONNX file: the identity of its query vectors
    text: TextSpec
    model: ModelSpec
    # Its bytes-in Triton ensembles (tokenize_text_multilingual + the tower) were written: exports before them
    # have none, and the Triton client tokenizes for this tower itself.
    strings_ensemble: bool = False


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
    multilingual: TextTowerSpec | None = None  # a multilingual text tower beside CLIP's (issue 15)

    @model_validator(mode="before")
    @classmethod
    def _place_format_1(cls, data: Any) -> Any:
        """Format 1 had every variant as a version of the tower's model: say so in each variant."""
        if not isinstance(data, dict) or data.get("format_version") != 1:
            return data
        data = copy.deepcopy(data)  # the caller's dict stays as given
        models = data.get("models")
        for spec in models.values() if isinstance(models, dict) else ():
            variants = spec.get("variants") if isinstance(spec, dict) else None
            for variant in variants.values() if isinstance(variants, dict) else ():
                if isinstance(variant, dict):
                    variant.setdefault("triton_model", spec.get("name"))
        return data

    @property
    def name(self) -> str:
        """A short human name: the source's last path part plus the fingerprint's start."""
        return f"{Path(self.source).name or self.source}@{self.fingerprint[:12]}"

    def multilingual_variant(self, precision: Precision, force: bool = False) -> VariantSpec:
        """The multilingual text tower's variant served beside CLIP's ``precision``: the same precision when
        exported (and passed by its gate, unless forced), else FP32. ModelError when there is no such tower."""
        if self.multilingual is None:
            raise ModelError("the model has no multilingual text tower (export --text-model)")
        variants = self.multilingual.model.variants
        same = variants.get(precision)
        if same is not None and (force or same.quality is None or same.quality.servable):
            return same
        if Precision.FP32 not in variants:
            raise ModelError(f"the multilingual text tower has no servable {precision} nor fp32 variant; re-export it")
        return variants[Precision.FP32]

    def served_multilingual(self, precision: Precision, setting: str, force: bool = False) -> VariantSpec | None:
        """The multilingual variant to serve under the ``text_tower`` setting, or None: none for ``clip`` or a
        model without such a tower; with ``auto``, none (logged) when no variant of it is servable; with
        ``multilingual``, ModelError in both cases."""
        if setting == "clip":
            return None
        try:
            return self.multilingual_variant(precision, force)
        except ModelError:
            if setting == "multilingual":
                raise
            if self.multilingual is not None:
                logging.getLogger(__name__).warning("the multilingual text tower has no servable variant: "
                                                    "queries use CLIP's text tower")  # fmt: skip
            return None

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

    def triton_model(self, modality: Modality, precision: Precision) -> tuple[str, int]:
        """The Triton model name and version serving ``precision`` of ``modality``.

        Raises ModelError when it is not exported, or when a per-item precision (INT8) is a version of the
        tower's batched model (a format-1 export): the server's dynamic batcher would put other callers' items
        into its calls, and the vector would depend on them.
        """
        variant = self.variant(modality, precision)
        shared = self.models[modality].name
        if precision in PER_ITEM and variant.triton_model == shared:
            raise ModelError(
                f"the model repository (manifest format {self.format_version}) serves {precision} as version "
                f"{variant.triton_version} of the batched Triton model {shared!r}, where the server batches "
                f"callers' items together and a {precision} vector depends on its batch-mates; re-export it "
                f"(`python -m pipeline export`), which gives {precision} a Triton model of its own"
            )
        return variant.triton_model, variant.triton_version

    def save(self, repository: Path) -> None:
        (repository / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")


def load_manifest(repository: Path) -> Manifest:
    """Read ``<repository>/manifest.json``; raise ModelError with the path when missing or malformed."""
    path = Path(repository) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{path} not found: export a model first (`python -m pipeline export --model SRC`)")
    try:
        data = json.loads(path.read_text())
        # The format first: another format's fields need not validate here, and "re-export" is the useful answer.
        found = data.get("format_version") if isinstance(data, dict) else None
        if found not in READABLE_FORMATS:
            raise ModelError(
                f"{path} has manifest format {found}; this code reads formats "
                f"{', '.join(map(str, READABLE_FORMATS))}: re-export the model with this version "
                "(`python -m pipeline export`) or run the version of the code that wrote it"
            )
        return Manifest.model_validate(data)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelError(f"{path} is not a valid manifest: {exc}") from exc


def cpu_needs_unsigned_int8() -> bool:
    """True on an x86 CPU without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4): there onnxruntime's dynamic
    INT8 kernel for signed weights (U8S8) multiplies with ``vpmaddubsw``, whose 16-bit sums saturate (measured
    with the tests' tiny CLIP: image cosine to FP32 0.62). With VNNI, or on Arm, signed weights are exact and
    fastest (measured on an Intel Xeon with VNNI, ViT-B/32 image tower, 2 threads: 28 ms, against 60 ms for
    unsigned weights at the same accuracy)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # not Linux: unknown, keep the default kernel
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def file_for_this_cpu(variant: VariantSpec) -> VariantSpec:
    """``variant`` as this machine should load it: its no-VNNI file on a CPU that needs one, else itself."""
    if variant.no_vnni is not None and cpu_needs_unsigned_int8():
        return variant.model_copy(update=variant.no_vnni.model_dump())
    return variant


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
