"""Export through the CLI, compared with transformers' own get_text_features / get_image_features."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.manifest import file_for_this_cpu, load_manifest, verify_model_file
from pipeline.types import Modality, Precision
from tests.conftest import run_cli

TEXTS = [
    f"{c} {p} {k}" for c in ("red", "blue", "green", "black") for p in ("striped", "plain") for k in ("shirt", "mug")
]
# Bounds measured on the tiny model (FP16 max |Δ| ≈ 6e-4, INT8 ≈ 1.7e-2, centred cosine ≥ 0.98) with headroom.
# A broken variant (swapped inputs, wrong mean/std, no normalisation) is off by ≥ 0.16: see the test below.
BOUNDS = {Precision.FP32: (1e-4, 0.9999), Precision.FP16: (2e-3, 0.999), Precision.INT8: (5e-2, 0.95)}


def _normalised(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1).numpy()


@pytest.fixture(scope="module")
def golden(reference):
    """Reference vectors from transformers for a fixed batch of pixels and texts."""
    model, tokenizer, _ = reference
    pixels = np.random.default_rng(0).normal(size=(16, 3, 224, 224)).astype(np.float32)
    tokens = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)
    with torch.no_grad():
        image = _normalised(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        text = _normalised(
            model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        )
    return {"pixels": pixels, "ids": ids, "mask": mask, "image": image, "text": text}


def _within(out: np.ndarray, ref: np.ndarray, max_abs: float, min_centred_cos: float) -> bool:
    """Close in absolute terms, unit length, and close after removing the shared mean direction.

    Random-weight CLIPs map every input near one direction, so plain cosine hides errors; centring does not.
    """
    mu = ref.mean(axis=0)
    a, r = out - mu, ref - mu
    centred = (a * r).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(r, axis=1)
    unit = np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
    return bool(np.abs(out - ref).max() <= max_abs and centred.min() >= min_centred_cos and unit)


def _run(repo, modality, precision, feeds):
    manifest = load_manifest(repo)
    session = ort.InferenceSession(str(repo / file_for_this_cpu(manifest.variant(modality, precision)).file))
    return session.run(None, feeds)[0]


def test_each_cpu_loads_the_int8_kernel_it_runs_exactly(model_repository, golden, monkeypatch):
    """Signed-weight INT8 saturates on x86 CPUs without VNNI: there the unsigned-weight file is loaded, else
    the signed one; whichever this machine picks stays within the INT8 bounds of the reference."""
    import pipeline.manifest as manifest_module

    manifest = load_manifest(model_repository)
    variant = manifest.variant(Modality.IMAGE, Precision.INT8)
    for needs, want in ((True, variant.no_vnni.file), (False, variant.file)):
        monkeypatch.setattr(manifest_module, "cpu_needs_unsigned_int8", lambda n=needs: n)
        assert manifest_module.file_for_this_cpu(variant).file == want
    monkeypatch.undo()
    max_abs, min_cos = BOUNDS[Precision.INT8]
    image = _run(model_repository, Modality.IMAGE, Precision.INT8, {"pixel_values": golden["pixels"]})
    assert _within(image, golden["image"], max_abs, min_cos), np.abs(image - golden["image"]).max()


@pytest.mark.parametrize("precision", list(Precision))
def test_variants_match_transformers(model_repository, golden, precision):
    max_abs, min_cos = BOUNDS[precision]
    image = _run(model_repository, Modality.IMAGE, precision, {"pixel_values": golden["pixels"]})
    text = _run(
        model_repository, Modality.TEXT, precision, {"input_ids": golden["ids"], "attention_mask": golden["mask"]}
    )
    assert image.shape == golden["image"].shape and text.shape == golden["text"].shape
    assert _within(image, golden["image"], max_abs, min_cos), np.abs(image - golden["image"]).max()
    assert _within(text, golden["text"], max_abs, min_cos), np.abs(text - golden["text"]).max()


def test_bounds_catch_broken_variants(model_repository, golden):
    """The INT8 bound (the loosest) must still refuse the classic export bugs."""
    max_abs, min_cos = BOUNDS[Precision.INT8]
    swapped = _run(
        model_repository, Modality.TEXT, Precision.FP32, {"input_ids": golden["mask"], "attention_mask": golden["ids"]}
    )
    assert not _within(swapped, golden["text"], max_abs, min_cos)
    # Pixels left in [0, 1] (mean/std not applied) instead of normalised.
    unnormalised_input = golden["pixels"] * 0.26 + 0.45
    wrong_std = _run(model_repository, Modality.IMAGE, Precision.FP32, {"pixel_values": unnormalised_input})
    assert not _within(wrong_std, golden["image"], max_abs, min_cos)
    # A graph that forgot the final L2 normalisation.
    assert not _within(golden["image"] * 3.0, golden["image"], max_abs, min_cos)


def test_text_model_takes_any_length(model_repository, reference):
    model, tokenizer, _ = reference
    for text in ("red mug", "word " * 100):
        tokens = tokenizer([text], truncation=True, max_length=77, return_tensors="np")
        ids, mask = tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)
        out = _run(model_repository, Modality.TEXT, Precision.FP32, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            ref = _normalised(
                model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            )
        assert ids.shape[1] in (4, 77)
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_manifest_and_layout(model_repository, tiny_checkpoint):
    manifest = load_manifest(model_repository)
    assert manifest.source == str(tiny_checkpoint) and manifest.dim == 32 and len(manifest.fingerprint) == 64
    assert manifest.precisions() == set(Precision)
    assert [t.name for t in manifest.models[Modality.TEXT].inputs] == ["input_ids", "attention_mask"]
    assert [t.name for t in manifest.models[Modality.IMAGE].outputs] == ["image_embeds"]
    assert manifest.text.max_length == 77 and manifest.image.size == 224
    # FP32 and FP16 are versions 1 and 2 of the tower's batched model; INT8 is version 1 of a model of its own.
    layout = {"clip_text": (1, 2), "clip_visual": (1, 2), "clip_text_int8": (1,), "clip_visual_int8": (1,)}
    for model, versions in layout.items():
        prod = (model_repository / model / "config.pbtxt").read_text()
        cpu = (model_repository / model / "configs" / "cpu_test.pbtxt").read_text()
        assert 'backend: "onnxruntime"' in prod and "KIND_GPU" in prod
        assert 'backend: "python"' in cpu and "KIND_CPU" in cpu
        assert f"versions: [ {', '.join(map(str, versions))} ]" in prod
        # Same tensors in both: everything after the backend/instance lines must agree.
        tensors = [
            [line for line in text.splitlines() if "name:" in line and "data_type" in line] for text in (prod, cpu)
        ]
        assert tensors[0] == tensors[1] and len(tensors[0]) >= 2
        for version in versions:
            assert (model_repository / model / str(version) / "model.onnx").is_file()
            assert "TritonPythonModel" in (model_repository / model / str(version) / "model.py").read_text()
        assert sorted(p.name for p in (model_repository / model).iterdir() if p.name.isdigit()) == list(
            map(str, versions)
        )
    for modality, model in ((Modality.TEXT, "clip_text"), (Modality.IMAGE, "clip_visual")):
        assert manifest.triton_model(modality, Precision.FP32) == (model, 1)
        assert manifest.triton_model(modality, Precision.FP16) == (model, 2)
        assert manifest.triton_model(modality, Precision.INT8) == (f"{model}_int8", 1)
        assert manifest.variant(modality, Precision.INT8).file == f"{model}_int8/1/model.onnx"
        # Beside it, the same quantisation with unsigned weights for x86 CPUs without VNNI, checked like it.
        no_vnni = manifest.variant(modality, Precision.INT8).no_vnni
        assert no_vnni is not None and no_vnni.file == f"{model}_int8/1/model.no_vnni.onnx"
        verify_model_file(model_repository, manifest.variant(modality, Precision.INT8).model_copy(
            update=no_vnni.model_dump()))  # fmt: skip
    assert (model_repository / "tokenizer.json").is_file()
    # Sizes: FP16 about half of FP32, INT8 smaller still.
    sizes = {p: manifest.variant(Modality.IMAGE, p).size_bytes for p in Precision}
    assert sizes[Precision.FP16] < 0.7 * sizes[Precision.FP32] and sizes[Precision.INT8] < sizes[Precision.FP32]


def test_rerun_is_up_to_date_and_precision_subset(tiny_checkpoint, model_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*.onnx")}
    proc = run_cli("export", "--model", str(tiny_checkpoint), "--out", str(repo))
    assert "up to date" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*.onnx")} == before

    only = tmp_path / "int8-only"
    run_cli("export", "--model", str(tiny_checkpoint), "--out", str(only), "--precision", "int8")
    manifest = load_manifest(only)
    assert manifest.precisions() == {Precision.INT8}
    # Same model, same fingerprint, whatever precisions were asked for.
    assert manifest.fingerprint == load_manifest(model_repository).fingerprint
    assert not (only / "clip_text").exists() and not (only / "clip_visual").exists()
    assert "versions: [ 1 ]" in (only / "clip_text_int8" / "config.pbtxt").read_text()


def test_not_clip_folder_is_refused_and_leaves_nothing(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = tmp_path / "out"
    proc = run_cli("export", "--model", str(folder), "--out", str(out), check=False)
    assert proc.returncode == 1
    assert "not a CLIP checkpoint" in proc.stderr and str(folder) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [folder]


def test_broken_weights_fail_without_touching_existing_repository(tiny_checkpoint, model_repository, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    manifest_before = (repo / "manifest.json").read_text()
    proc = run_cli("export", "--model", str(bad), "--out", str(repo), check=False)
    assert proc.returncode == 1 and "cannot load" in proc.stderr
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    assert (repo / "manifest.json").read_text() == manifest_before


def test_missing_folder_and_missing_config(tmp_path):
    proc = run_cli("export", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 1 and "no such folder" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("export", "--model", str(empty), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 1 and "no config.json" in proc.stderr
    assert not (tmp_path / "o").exists()


# --- calibration from a catalog: unreadable images -----------------------------------------------------------


def _calibration_catalog(folder, readable: int, corrupt: int):
    """A catalog of ``readable`` products with sound JPEGs and ``corrupt`` whose image is cut short or missing."""
    from tests.images import encode, noise_image

    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(readable + corrupt):
        image = folder / "img" / f"p{i}.jpg"
        data = encode(noise_image(64, 48, seed=i), "JPEG")
        if i >= readable:
            data = data[:200] if i % 2 else b""  # truncated, or an empty file
        image.write_bytes(data)
        rows.append({"id": f"p{i}", "name": f"product {i}", "images": [str(image)]})
    path = folder / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_calibration_skips_unreadable_images_and_says_how_many(tiny_checkpoint, tmp_path):
    catalog = _calibration_catalog(tmp_path / "cat", readable=12, corrupt=3)
    out = tmp_path / "repo"
    proc = run_cli("export", "--model", str(tiny_checkpoint), "--out", str(out), "--precision", "fp32",
                   "--precision", "int8", "--calibration", str(catalog), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "12 pairs" in proc.stderr and "3 unreadable images skipped" in proc.stderr
    quality = load_manifest(out).models[Modality.IMAGE].variants[Precision.INT8].quality
    assert quality is not None and "3 unreadable images skipped" in quality.calibration


def test_calibration_with_too_few_readable_images_is_one_clean_error(tiny_checkpoint, tmp_path):
    catalog = _calibration_catalog(tmp_path / "cat", readable=6, corrupt=2)
    out = tmp_path / "repo"
    proc = run_cli("export", "--model", str(tiny_checkpoint), "--out", str(out), "--precision", "int8",
                   "--calibration", str(catalog), check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "6 readable images" in error[0] and "2 unreadable" in error[0], proc.stderr
    assert "at least 10" in error[0] and str(catalog) in proc.stderr.replace("\n", "")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # no staging left behind


# --- publishing: a reader sees the old repository or the new one, never a mix --------------------------------


def _snapshot(repo):
    """(fingerprint, model files on disk) when ``repo`` is one whole repository; raises when it is a mix (a file
    the manifest does not describe, or a file it lists that is absent or different)."""
    from pipeline.manifest import verify_model_file

    manifest = load_manifest(repo)
    listed = set()
    for spec in manifest.models.values():
        for variant in spec.variants.values():
            verify_model_file(repo, variant)
            listed.add(variant.file)
    on_disk = {str(p.relative_to(repo)) for p in repo.rglob("model.onnx")}
    assert on_disk == listed, f"model files {sorted(on_disk ^ listed)} differ from the manifest"
    return manifest.fingerprint, frozenset(on_disk)


def test_publish_is_one_swap_and_keeps_unrelated_files(model_repository, other_repository, tmp_path, monkeypatch):
    """Re-export another model into a repository while looking at it after every file operation the export
    makes: each look finds the old repository or the new one, whole. Unrelated files survive, the variants and
    ensembles no longer exported go."""
    import os

    from pipeline.errors import ModelError
    from pipeline.export.repository import export_repository
    from pipeline.export.triton_extras import image_ensemble

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    (repo / "NOTES.txt").write_text("ours\n")
    (repo / "other_model" / "1").mkdir(parents=True)
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"\n')
    before = _snapshot(repo)
    mode = repo.stat().st_mode

    looks, mixes = [], []

    def look(label):
        try:
            looks.append(_snapshot(repo))
        except (ModelError, AssertionError, OSError) as exc:  # not readable as one whole repository
            mixes.append(f"after {label}: {exc}")

    for name in ("replace", "rename", "link", "unlink", "rmdir"):
        original = getattr(os, name)

        def watched(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            look(f"os.{_name}{args[:2]}")
            return result

        monkeypatch.setattr(os, name, watched)
    other_source = load_manifest(other_repository).source
    manifest = export_repository(other_source, repo, [Precision.FP32, Precision.INT8])
    monkeypatch.undo()

    after = _snapshot(repo)
    assert not mixes, mixes[:3]
    assert looks and set(looks) <= {before, after} and before != after
    assert after[0] == manifest.fingerprint == load_manifest(other_repository).fingerprint
    assert (repo / "NOTES.txt").read_text() == "ours\n" and (repo / "other_model" / "1").is_dir()
    assert (repo / "other_model" / "config.pbtxt").read_text() == 'name: "other_model"\n'
    assert not (repo / "clip_text" / "2").exists() and not (repo / image_ensemble(Precision.FP16)).exists()
    assert (repo / image_ensemble(Precision.INT8) / "config.pbtxt").is_file()
    assert repo.stat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # the old repository and staging are gone


# --- loaders check the manifest's sha256 ---------------------------------------------------------------------


def test_damaged_model_file_is_refused_by_name_and_rebuilt_by_export(tiny_checkpoint, model_repository, tmp_path):
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.errors import ModelError

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    truncated = repo / "clip_visual" / "1" / "model.onnx"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"clip_visual/1/model\.onnx: \d+ bytes where the manifest recorded"):
        OnnxEncoder.load(repo, precision=Precision.FP32)
    proc = run_cli("embed", "--model-repository", str(repo), "--precision", "fp32", "--text", "x", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "clip_visual/1/model.onnx" in proc.stderr and "re-export" in proc.stderr

    # Same size, one byte changed: only the sha256 can tell (in the INT8 file this CPU loads).
    rel = file_for_this_cpu(load_manifest(repo).variant(Modality.TEXT, Precision.INT8)).file
    altered = repo / rel
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=re.escape(rel) + r": sha256 .* differs from the manifest"):
        OnnxEncoder.load(repo, precision=Precision.INT8)

    # A re-export does not keep either damaged file as "up to date": both are rebuilt, the rest kept.
    proc = run_cli("export", "--model", str(tiny_checkpoint), "--out", str(repo))
    assert "already exported from this source" not in proc.stderr and "text int8: building" in proc.stderr
    assert "image fp32: building" in proc.stderr and "text fp32: up to date, kept" in proc.stderr
    for precision in (Precision.FP32, Precision.INT8):
        OnnxEncoder.load(repo, precision=precision)


# --- INT8 is a Triton model of its own, never batched across callers -----------------------------------------


@pytest.mark.parametrize("production", [True, False])
def test_int8_config_has_no_dynamic_batching_and_fp_configs_keep_it(model_repository, production):
    from pipeline.export.triton_config import render_config

    manifest = load_manifest(model_repository)
    for modality, spec in manifest.models.items():
        batched = render_config(
            spec.name,
            spec,
            [spec.variants[Precision.FP32], spec.variants[Precision.FP16]],
            production=production,
            max_batch_size=64,
        )
        int8_name = manifest.triton_model(modality, Precision.INT8)[0]
        alone = render_config(
            int8_name, spec, [spec.variants[Precision.INT8]], production=production, max_batch_size=64
        )
        assert "dynamic_batching {" in batched and "max_batch_size: 64" in batched
        assert "versions: [ 1, 2 ]" in batched
        assert "dynamic_batching" not in alone and "max_batch_size: 1\n" in alone
        assert f'name: "{int8_name}"' in alone and "versions: [ 1 ]" in alone
        # The files export wrote say the same.
        for model, text in ((spec.name, batched), (int8_name, alone)):
            path = model_repository / model / ("config.pbtxt" if production else "configs/cpu_test.pbtxt")
            assert path.read_text() == text
    # The INT8 ensembles call the INT8 models, at their batch size; the others the batched models.
    strings = (model_repository / "clip_text_strings_int8" / "config.pbtxt").read_text()
    assert 'model_name: "clip_text_int8" model_version: 1' in strings and "max_batch_size: 1\n" in strings
    image = (model_repository / "clip_visual_bytes_int8" / "config.pbtxt").read_text()
    assert 'model_name: "clip_visual_int8" model_version: 1' in image
    fp16 = (model_repository / "clip_text_strings_fp16" / "config.pbtxt").read_text()
    assert 'model_name: "clip_text" model_version: 2' in fp16 and "max_batch_size: 64\n" in fp16


def _as_format_1(repo):
    """Rewrite an exported repository the way format 1 laid it out: INT8 as version 3 of the tower's model."""
    manifest = json.loads((repo / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest["exporter"]["format"] = "1"
    for spec in manifest["models"].values():
        for variant in spec["variants"].values():
            variant.pop("triton_model")
        int8 = spec["variants"]["int8"]
        int8.pop("no_vnni")  # format 1 had one INT8 file
        old = repo / spec["name"] / "3"
        old.mkdir()
        shutil.move(repo / int8["file"], old / "model.onnx")
        shutil.rmtree(repo / f"{spec['name']}_int8")
        int8.update(file=f"{spec['name']}/3/model.onnx", triton_version=3)
    (repo / "manifest.json").write_text(json.dumps(manifest))


async def test_format_1_manifest_is_read_and_int8_on_triton_asks_for_a_re_export(
    tiny_checkpoint, model_repository, tmp_path
):
    from pipeline.config import Settings
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.encoders.triton import TritonEncoder
    from pipeline.errors import ModelError

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    _as_format_1(repo)
    manifest = load_manifest(repo)
    assert manifest.format_version == 1
    # In-process needs only the files, wherever the manifest says they are.
    encoder = OnnxEncoder.load(repo, precision=Precision.INT8)
    assert (await encoder.encode_texts(["red mug"])).shape == (1, 32)
    await encoder.aclose()
    # FP32/FP16 on Triton are where format 1 put them; INT8 there would be batched with other callers: refused.
    assert manifest.triton_model(Modality.TEXT, Precision.FP32) == ("clip_text", 1)
    with pytest.raises(ModelError, match=r"version 3 of the batched Triton model 'clip_text'.*re-export"):
        manifest.triton_model(Modality.TEXT, Precision.INT8)
    settings = Settings(encoder={"model_repository": repo}, triton={"url": "127.0.0.1:1"})
    with pytest.raises(ModelError, match="re-export"):
        await TritonEncoder.connect(settings, Precision.INT8)

    # A re-export moves INT8 to its own models and leaves nothing of the old version 3 behind.
    proc = run_cli("export", "--model", str(tiny_checkpoint), "--out", str(repo))
    assert "text int8: building" in proc.stderr
    manifest = load_manifest(repo)
    assert manifest.format_version == 2
    assert manifest.triton_model(Modality.IMAGE, Precision.INT8) == ("clip_visual_int8", 1)
    for tower in ("clip_text", "clip_visual"):
        assert not (repo / tower / "3").exists() and "versions: [ 1, 2 ]" in (repo / tower / "config.pbtxt").read_text()
        assert (repo / f"{tower}_int8" / "1" / "model.onnx").is_file()
    assert _snapshot(repo)[0] == manifest.fingerprint


def test_manifest_of_an_unknown_format_is_refused_with_re_export(model_repository, tmp_path):
    from pipeline.errors import ModelError

    repo = tmp_path / "repo"
    repo.mkdir()
    manifest = json.loads((model_repository / "manifest.json").read_text())
    manifest["format_version"] = 3
    manifest["models"] = "changed beyond recognition"
    (repo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"manifest format 3; this code reads formats 1, 2: re-export"):
        load_manifest(repo)


def test_dropping_int8_drops_its_models(tiny_checkpoint, model_repository, tmp_path):
    """An export that no longer has INT8 (another source, FP32 only) removes the INT8 models whole: a model
    folder left without its version would fail the server's start-up."""
    from pipeline.export.repository import export_repository
    from pipeline.export.tiny import build_tiny_clip

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    other = build_tiny_clip(tmp_path / "other-clip", seed=2)
    export_repository(str(other), repo, [Precision.FP32])
    assert load_manifest(repo).precisions() == {Precision.FP32}
    for gone in ("clip_text_int8", "clip_visual_int8", "clip_text_strings_int8", "clip_visual_bytes_int8"):
        assert not (repo / gone).exists(), gone
    assert (repo / "clip_text" / "1" / "model.onnx").is_file() and not (repo / "clip_text" / "2").exists()
