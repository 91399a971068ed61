"""``export --text-model``: a multilingual text tower added to an exported CLIP repository.

Written beside CLIP's towers as the Triton models ``clip_text_multilingual`` (FP32 version 1, FP16 version 2) and
``clip_text_multilingual_int8``, with ``tokenizer_multilingual.json``, its bytes-in ensembles
(``clip_text_multilingual_strings_<precision>``: the tokenizer runs on the server, as CLIP's does), and recorded in
the manifest as ``multilingual``. Its INT8 variant passes the same gate as CLIP's (cosine to its FP32 on the
calibration titles, top-10 overlap of title→image retrieval against the repository's FP32 image vectors). Its
output dimension must equal the image tower's, or the export refuses: its queries search the same image vectors.

Like the main export, the new repository is built in a staging folder and swapped in one step; everything else in
``out`` is carried over.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ModelError
from pipeline.export.publish import publish, staging_folder
from pipeline.export.repository import NO_VNNI_FILE, Log, folder_digest, resolve_source, write_configs
from pipeline.export.text_tower import MULTILINGUAL_TOKENIZER, export_tower_onnx, load_text_tower
from pipeline.manifest import (
    MULTILINGUAL_MODEL,
    PER_ITEM,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    KernelFile,
    Manifest,
    ModelSpec,
    TensorSpec,
    TextTowerSpec,
    VariantSpec,
    load_manifest,
    sha256_file,
    verify_model_file,
)
from pipeline.types import Modality, Precision


def _placement(precision: Precision) -> tuple[str, int]:
    if precision in PER_ITEM:
        return f"{MULTILINGUAL_MODEL}_{precision}", 1
    return MULTILINGUAL_MODEL, precision.triton_version


def export_text_tower(
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
    """Add the text model at ``source`` to the exported repository ``out`` as its multilingual tower.

    Raises ModelError when ``out`` holds no export, when ``source`` is not a text model of a known shape, or
    when its dimension differs from the image tower's; ``out`` is left untouched on any failure."""
    from pipeline.export.quantize import to_fp16, to_int8

    out = Path(out)
    manifest = load_manifest(out)
    log(f"loading the text model {source}")
    tower = load_text_tower(source)
    if tower.dim != manifest.dim:
        raise ModelError(
            f"{source}: its vectors have {tower.dim} dimensions, the image tower's {manifest.dim}: a text tower "
            "must map into the image tower's space to search its vectors"
        )
    digest = folder_digest(resolve_source(source))
    if _up_to_date(manifest, out, digest, precisions):
        log(f"{out}: multilingual text tower from {source} up to date")
        return manifest
    staging = staging_folder(out)
    try:
        fp32 = staging / ".fp32" / "text.onnx"
        fp32.parent.mkdir()
        log("exporting the multilingual text tower (fp32)")
        export_tower_onnx(tower, fp32)
        variants: dict[Precision, VariantSpec] = {}
        for precision in sorted(set(precisions), key=lambda p: p.triton_version):
            model, version = _placement(precision)
            rel = f"{model}/{version}/model.onnx"
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            log(f"multilingual text {precision}: building")
            no_vnni = None
            if precision is Precision.FP32:
                shutil.copyfile(fp32, dst)
            elif precision is Precision.FP16:
                to_fp16(fp32, dst)
            else:
                to_int8(fp32, dst)
                kernel = str(Path(rel).with_name(NO_VNNI_FILE))
                to_int8(fp32, staging / kernel, signed_weights=False)
                no_vnni = KernelFile(file=kernel, sha256=sha256_file(staging / kernel),
                                     size_bytes=(staging / kernel).stat().st_size)  # fmt: skip
            variants[precision] = VariantSpec(precision=precision, file=rel, sha256=sha256_file(dst),
                                              size_bytes=dst.stat().st_size, triton_model=model,
                                              triton_version=version, no_vnni=no_vnni)  # fmt: skip
        tower.tokenizer.backend_tokenizer.save(str(staging / MULTILINGUAL_TOKENIZER))
        text = tower.text.model_copy(update={"tokenizer_file": MULTILINGUAL_TOKENIZER})
        spec = ModelSpec(
            name=MULTILINGUAL_MODEL,
            inputs=[TensorSpec(name=n, dtype="int64", shape=[-1, -1]) for n in TEXT_INPUTS],
            outputs=[TensorSpec(name=TEXT_OUTPUT, dtype="float32", shape=[-1, manifest.dim])],
            variants=variants,
        )
        updated = manifest.model_copy(deep=True)
        updated.multilingual = TextTowerSpec(source=source, source_digest=digest, kind=tower.kind,
                                             fingerprint=sha256_file(fp32), text=text, model=spec,
                                             strings_ensemble=True)  # fmt: skip
        if Precision.INT8 in variants:
            _gate(updated, staging, out, fp32, calibration, min_cosine, min_overlap, log)
        shutil.rmtree(fp32.parent)
        write_configs(staging, updated, max_batch_size)
        updated.save(staging)
        publish(staging, out, updated, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{out}: multilingual text tower from {source} ({tower.kind}, dim {tower.dim})")
    return updated


def _up_to_date(manifest: Manifest, out: Path, digest: str, precisions: Sequence[Precision]) -> bool:
    """Whether ``out`` already holds this source's tower at these precisions, its files intact."""
    tower = manifest.multilingual
    if tower is None or tower.source_digest != digest or set(tower.model.variants) != set(precisions):
        return False
    if not tower.strings_ensemble:  # exported before the tower had its bytes-in ensembles
        return False
    try:
        for variant in tower.model.variants.values():
            verify_model_file(out, variant)
    except ModelError:
        return False
    return (out / tower.text.tokenizer_file).is_file()


def _gate(manifest: Manifest, staging: Path, out: Path, fp32: Path, calibration: Path | None, min_cosine: float,
          min_overlap: float, log: Log) -> None:  # fmt: skip
    """The INT8 gate on this tower: its vectors against its FP32's, and title→image top-10 overlap against the
    repository's FP32 image vectors (the image figures compare that file with itself: 1.0)."""
    from pipeline.export.quality import catalog_calibration, generated_calibration, measure
    from pipeline.manifest import file_for_this_cpu

    assert manifest.multilingual is not None
    tower = manifest.multilingual
    calib = catalog_calibration(calibration, manifest.image) if calibration else generated_calibration(manifest.image)
    fp32_image = manifest.models[Modality.IMAGE].variants.get(Precision.FP32)
    image = out / fp32_image.file if fp32_image else out / "missing"
    if not image.is_file():
        raise ModelError(f"{out}: the INT8 gate needs the FP32 image tower; export it (--precision fp32)")
    int8 = staging / file_for_this_cpu(tower.model.variants[Precision.INT8]).file
    log(f"multilingual int8: measuring against fp32 on {calib.source}")
    verdict = measure({"int8": (int8, image)}, (fp32, image), calib, tower.text, staging / tower.text.tokenizer_file,
                      min_cosine, min_overlap, ["int8"])["int8"]  # fmt: skip
    tower.model.variants[Precision.INT8].quality = verdict
    if verdict.servable:
        log(f"multilingual int8: servable ({verdict.figures})")
    else:
        log(f"multilingual int8: NOT servable: {'; '.join(verdict.reasons)}")
