"""``python -m pipeline export``: a CLIP checkpoint → a Triton model repository plus manifest.

Layout written under ``out``::

    manifest.json  tokenizer.json
    clip_text/        config.pbtxt  configs/cpu_test.pbtxt  1/model.onnx (fp32)  2/… (fp16)  */model.py
    clip_text_int8/   config.pbtxt  configs/cpu_test.pbtxt  1/model.onnx (int8)  1/model.py
    clip_visual/  clip_visual_int8/   the same for the vision tower

INT8 is a Triton model of its own, without dynamic batching (``pipeline.export.triton_config``); the manifest
records each variant's Triton model and version, which the client and the ensembles follow.

The whole new repository is built in a staging folder beside ``out`` (new files written there, the files of
``out`` it keeps linked in) and swapped with ``out`` in one rename, so a reader sees the old repository or the
new one, never a mix, and a failed or interrupted export leaves ``out`` as it was. Files in ``out`` that the
export does not own (other Triton models, notes) are carried over; variant files and ensembles no longer in
the manifest are not. Variants already exported from the same source by the same tool versions (their files'
sha256 intact) are kept, not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.export.publish import publish, same_content, staging_folder
from pipeline.export.triton_extras import FINGERPRINT_PARAMETER, write_extras
from pipeline.manifest import (
    FORMAT_VERSION,
    IMAGE_INPUT,
    IMAGE_MODEL,
    IMAGE_OUTPUT,
    MANIFEST_FILE,
    PER_ITEM,
    TEXT_INPUTS,
    TEXT_MODEL,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
    ImageSpec,
    KernelFile,
    Manifest,
    ModelSpec,
    TensorSpec,
    TextSpec,
    VariantSpec,
    file_for_this_cpu,
    load_manifest,
    sha256_file,
    verify_model_file,
)
from pipeline.types import Modality, Precision

Log = Callable[[str], None]
NO_VNNI_FILE = "model.no_vnni.onnx"  # beside an INT8 variant's model.onnx: unsigned weights (see quantize.to_int8)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]
_MODEL_NAMES = {Modality.TEXT: TEXT_MODEL, Modality.IMAGE: IMAGE_MODEL}
# Staging folders of exports that were killed before they could clean up (older versions staged inside out).
_SHIM = "from pipeline.triton.onnx_model import TritonPythonModel  # noqa: F401  (written by pipeline export)\n"


def resolve_source(source: str) -> Path:
    """A local folder as is; otherwise a hub id fetched into the Hugging Face cache (needs internet)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{source}: not a folder (expected a save_pretrained folder or a hub id)")
    if not _HUB_ID.match(source) or source.startswith((".", "/")):
        raise ModelError(f"{source}: no such folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=_HUB_FILES))
    except Exception as exc:  # the hub raises many types (HTTP, offline, not found); all mean the same here
        raise ModelError(f"{source}: not a local folder, and the model hub could not provide it ({exc})") from exc


def read_clip_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's config.json, refusing anything that is not a CLIP dual encoder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder}: no config.json, not a transformers checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_file}: not valid JSON ({exc})") from exc
    if config.get("model_type") != "clip":
        raise ModelError(f"{folder}: model_type is {config.get('model_type')!r}, not a CLIP checkpoint ('clip')")
    return config


def image_spec(folder: Path, config: dict[str, Any]) -> ImageSpec:
    """Preprocessing constants from preprocessor_config.json (CLIP's defaults where it is absent)."""
    image_size = int(config.get("vision_config", {}).get("image_size", 224))
    spec = ImageSpec(size=image_size)
    pre_file = folder / "preprocessor_config.json"
    if not pre_file.is_file():
        return spec
    pre = json.loads(pre_file.read_text())
    size = pre.get("size", image_size)
    shortest = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop = pre.get("crop_size", shortest)
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if not (shortest == crop == image_size):
        raise ModelError(
            f"{pre_file}: resize {shortest} / crop {crop} / model {image_size} differ; only CLIP's "
            "resize-to-crop-size preprocessing is supported"
        )
    if pre.get("resample", 3) != 3:
        raise ModelError(f"{pre_file}: resample {pre.get('resample')} is not bicubic (3)")
    return ImageSpec(
        size=image_size,
        mean=tuple(pre.get("image_mean", spec.mean)),
        std=tuple(pre.get("image_std", spec.std)),
    )


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and content: the identity of the source checkpoint."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def exporter_versions() -> dict[str, str]:
    versions = {name: metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime")}
    return {"format": str(FORMAT_VERSION), **versions}


def triton_placement(modality: Modality, precision: Precision) -> tuple[str, int]:
    """The Triton model and version export gives ``precision`` of ``modality``: FP32/FP16 are versions 1/2 of
    the tower's batched model; a per-item precision (INT8) is version 1 of a model of its own, ``<tower>_int8``,
    because Triton's dynamic batching is set per model, not per version."""
    tower = _MODEL_NAMES[modality]
    if precision in PER_ITEM:
        return f"{tower}_{precision}", 1
    return tower, precision.triton_version


def _rel(modality: Modality, precision: Precision) -> str:
    model, version = triton_placement(modality, precision)
    return f"{model}/{version}/model.onnx"


def _tensor_specs(dim: int, image_size: int) -> dict[Modality, tuple[list[TensorSpec], list[TensorSpec]]]:
    return {
        Modality.TEXT: (
            [TensorSpec(name=n, dtype="int64", shape=[-1, -1]) for n in TEXT_INPUTS],
            [TensorSpec(name=TEXT_OUTPUT, dtype="float32", shape=[-1, dim])],
        ),
        Modality.IMAGE: (
            [TensorSpec(name=IMAGE_INPUT, dtype="float32", shape=[-1, 3, image_size, image_size])],
            [TensorSpec(name=IMAGE_OUTPUT, dtype="float32", shape=[-1, dim])],
        ),
    }


def _reusable(existing: Manifest | None, out: Path, digest: str, versions: dict[str, str]) -> dict:
    """Variants in ``out`` made from the same source by the same tool versions, with intact files (size and
    sha256 as recorded)."""
    if existing is None or existing.source_digest != digest or existing.exporter != versions:
        return {}
    keep = {}
    for modality, spec in existing.models.items():
        for precision, variant in spec.variants.items():
            if precision is Precision.INT8 and variant.no_vnni is None:
                continue  # exported before INT8 had a file per CPU kind: rebuilt with both
            try:
                verify_model_file(out, variant)
                if variant.no_vnni is not None:
                    verify_model_file(out, variant.model_copy(update=variant.no_vnni.model_dump()))
            except ModelError:
                continue  # damaged or missing: rebuilt
            keep[(modality, precision)] = variant
    return keep


def export_repository(
    source: str,
    out: Path,
    precisions: Sequence[Precision] = tuple(Precision),
    *,
    max_batch_size: int = 64,
    calibration: Path | None = None,
    min_cosine: float = 0.95,
    min_overlap: float = 0.8,
    log: Log = lambda _msg: None,
) -> Manifest:
    """Export ``source`` (hub id or save_pretrained folder) into the Triton repository ``out``.

    Each INT8 variant is measured against FP32 on ``calibration`` (a catalog; drawn products when None) and
    marked servable only when its cosine to FP32 (both towers, mean) ≥ ``min_cosine`` and its text→image
    top-10 overlap ≥ ``min_overlap``; the figures go into the manifest.

    Returns the manifest written. Raises ModelError for a source that is missing or not CLIP; ``out`` is left
    untouched on any failure.
    """
    out = Path(out)
    precisions = sorted(set(precisions), key=lambda p: p.triton_version)
    folder = resolve_source(source)
    config = read_clip_config(folder)
    img_spec = image_spec(folder, config)
    digest = folder_digest(folder)
    versions = exporter_versions()
    try:
        existing: Manifest | None = load_manifest(out) if (out / MANIFEST_FILE).exists() else None
    except ModelError:
        existing = None
    reuse = _reusable(existing, out, digest, versions)
    wanted = [(m, p) for m in Modality for p in precisions]
    staging = staging_folder(out)
    try:
        if existing is not None and all(key in reuse for key in wanted):
            # The configs are cheap and derived from the manifest (and --max-batch-size): always current.
            write_configs(staging, existing, max_batch_size)
            existing.save(staging)
            if not same_content(staging, out):
                publish(staging, out, existing, existing)
            log(f"{out}: up to date ({', '.join(precisions)} already exported from this source)")
            return existing
        manifest = _build(
            folder,
            source,
            config,
            img_spec,
            digest,
            versions,
            precisions,
            reuse,
            existing,
            staging,
            max_batch_size,
            log,
        )
        _gate(manifest, staging, out, calibration, min_cosine, min_overlap, log)
        if existing is not None and existing.multilingual and existing.fingerprint == manifest.fingerprint:
            manifest.multilingual = existing.multilingual  # distilled into this very model: still valid
        shutil.rmtree(staging / ".fp32")
        write_configs(staging, manifest, max_batch_size)
        manifest.save(staging)
        publish(staging, out, manifest, existing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap, this is the old repository
    log(f"{out}: exported {', '.join(precisions)} (dim {manifest.dim}, fingerprint {manifest.fingerprint[:12]})")
    return manifest


def _build(
    folder: Path,
    source: str,
    config: dict[str, Any],
    img_spec: ImageSpec,
    digest: str,
    versions: dict[str, str],
    precisions: Sequence[Precision],
    reuse: dict,
    existing: Manifest | None,
    staging: Path,
    max_batch_size: int,
    log: Log,
) -> Manifest:
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, CLIPModel

    from pipeline.export.onnx_export import export_text, export_vision
    from pipeline.export.quantize import to_fp16, to_int8

    log(f"loading {source}")
    try:
        model = CLIPModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelError(f"{source}: cannot load the CLIP weights or tokenizer ({exc})") from exc
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelError(f"{source}: tokenizer has no tokenizers-library backend to export")
    dim = int(model.config.projection_dim)
    max_length = int(model.config.text_config.max_position_embeddings)
    text_spec = TextSpec(
        max_length=max_length,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )

    fp32_dir = staging / ".fp32"
    fp32_dir.mkdir()
    fp32 = {Modality.TEXT: fp32_dir / "text.onnx", Modality.IMAGE: fp32_dir / "image.onnx"}
    log("exporting the text tower (fp32)")
    export_text(model, fp32[Modality.TEXT], max_length, text_spec.eos_token_id)
    log("exporting the vision tower (fp32)")
    export_vision(model, fp32[Modality.IMAGE], img_spec.size)
    fingerprint = hashlib.sha256(
        (sha256_file(fp32[Modality.TEXT]) + sha256_file(fp32[Modality.IMAGE])).encode()
    ).hexdigest()
    if existing is not None and reuse and existing.fingerprint != fingerprint:
        reuse = {}  # same source, but the graphs differ: rebuild everything rather than mix

    models: dict[Modality, ModelSpec] = {}
    for modality, (inputs, outputs) in _tensor_specs(dim, img_spec.size).items():
        variants: dict[Precision, VariantSpec] = {}
        if reuse and existing is not None:
            variants.update({p: v for (m, p), v in reuse.items() if m == modality})
        for precision in precisions:
            if (modality, precision) in reuse:
                log(f"{modality} {precision}: up to date, kept")
                continue
            dst = staging / _rel(modality, precision)
            dst.parent.mkdir(parents=True, exist_ok=True)
            log(f"{modality} {precision}: building")
            if precision is Precision.FP32:
                shutil.copyfile(fp32[modality], dst)
            elif precision is Precision.FP16:
                to_fp16(fp32[modality], dst)
            no_vnni = None
            if precision is Precision.INT8:
                to_int8(fp32[modality], dst)
                rel = str(Path(_rel(modality, precision)).with_name(NO_VNNI_FILE))
                to_int8(fp32[modality], staging / rel, signed_weights=False)
                no_vnni = KernelFile(
                    file=rel, sha256=sha256_file(staging / rel), size_bytes=(staging / rel).stat().st_size
                )
            variants[precision] = VariantSpec(
                precision=precision,
                file=_rel(modality, precision),
                sha256=sha256_file(dst),
                size_bytes=dst.stat().st_size,
                triton_model=triton_placement(modality, precision)[0],
                triton_version=triton_placement(modality, precision)[1],
                no_vnni=no_vnni,
            )
        models[modality] = ModelSpec(name=_MODEL_NAMES[modality], inputs=inputs, outputs=outputs, variants=variants)
    tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
    return Manifest(
        source=source,
        source_digest=digest,
        dim=dim,
        fingerprint=fingerprint,
        image=img_spec,
        text=text_spec,
        models=models,
        exporter=versions,
    )


def _gate(
    manifest: Manifest,
    staging: Path,
    out: Path,
    calibration: Path | None,
    min_cosine: float,
    min_overlap: float,
    log: Log,
) -> None:
    """Measure newly built INT8 variants against FP32 (kept in staging) and record the verdicts."""
    from pipeline.export.quality import catalog_calibration, generated_calibration, measure

    fresh = [
        m.variants[Precision.INT8]
        for m in manifest.models.values()
        if Precision.INT8 in m.variants and m.variants[Precision.INT8].quality is None
    ]
    if not fresh:
        return
    calib = catalog_calibration(calibration, manifest.image) if calibration else generated_calibration(manifest.image)
    fp32 = (staging / ".fp32" / "text.onnx", staging / ".fp32" / "image.onnx")
    files = {}
    for precision in (Precision.INT8,):
        paths = []
        for modality in (Modality.TEXT, Modality.IMAGE):
            # The file this machine's encoder would load (the no-VNNI one on a CPU that needs it).
            rel = file_for_this_cpu(manifest.models[modality].variants[precision]).file
            paths.append(staging / rel if (staging / rel).exists() else out / rel)
        files[precision.value] = (paths[0], paths[1])
    log(f"int8: measuring against fp32 on {calib.source}")
    verdicts = measure(
        files, fp32, calib, manifest.text, staging / TOKENIZER_FILE, min_cosine, min_overlap, [Precision.INT8.value]
    )
    verdict = verdicts[Precision.INT8.value]
    for spec in manifest.models.values():
        if Precision.INT8 in spec.variants:
            spec.variants[Precision.INT8].quality = verdict
    figures = ", ".join(f"{k} {v}" for k, v in verdict.figures.items())
    if verdict.servable:
        log(f"int8: servable ({figures})")
    else:
        log(f"int8: NOT servable: {'; '.join(verdict.reasons)} ({figures}); encoders refuse it unless forced")


def write_configs(root: Path, manifest: Manifest, max_batch_size: int) -> None:
    """Everything derived from the manifest: per Triton model a config.pbtxt + cpu_test twin and python shims;
    the preprocessing models and ensembles."""
    from pipeline.export.triton_config import render_config

    towers = [*manifest.models.values(), *([manifest.multilingual.model] if manifest.multilingual else [])]
    for spec in towers:
        served: dict[str, list[VariantSpec]] = {}
        for variant in spec.variants.values():
            served.setdefault(variant.triton_model, []).append(variant)
        for name, variants in served.items():
            model_dir = root / name
            (model_dir / "configs").mkdir(parents=True, exist_ok=True)
            for production, path in ((True, "config.pbtxt"), (False, "configs/cpu_test.pbtxt")):
                config = render_config(name, spec, variants, production=production, max_batch_size=max_batch_size)
                if manifest.multilingual is not None and spec is manifest.multilingual.model:
                    # the client checks it: a server holding another multilingual tower is refused
                    config += (f'parameters {{ key: "{FINGERPRINT_PARAMETER}" value: {{ string_value: '
                               f'"{manifest.multilingual.fingerprint}" }} }}\n')  # fmt: skip
                (model_dir / path).write_text(config)
            for variant in variants:
                shim = model_dir / str(variant.triton_version) / "model.py"
                shim.parent.mkdir(parents=True, exist_ok=True)
                shim.write_text(_SHIM)
    write_extras(root, manifest, max_batch_size)
