"""A multilingual text tower exported beside CLIP's (``export --text-model``): tiny DistilBERT + Dense
(sentence-transformers) and XLM-R + linear (M-CLIP) towers built from configs with a fixed seed and tokenizers
trained locally, exported through the CLI, against the reference implementations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.errors import ModelError
from pipeline.export.publish import _dropped
from pipeline.manifest import load_manifest
from pipeline.preprocess import TextTokenizer
from pipeline.triton.server import unsupported_reason
from pipeline.types import Precision
from tests.conftest import run_cli

TEXTS = [
    "red mug",
    "a blue striped cotton t-shirt for summer",
    "تيشيرت أزرق مخطط",  # Arabic
    "تِيشِيرْت مُخَطَّط",  # with diacritics
    "تيشيـــــرت",  # with tatweel
    "gold خاتم ذهب ring",  # mixed script
    "🎉 gift 😀",  # emoji
    "ქართული ანბანი",  # a script neither tokenizer was trained on: unknown tokens, still a vector
    "blue " * 300,  # over-long: truncated
]


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    from pipeline.export.tiny_text import build_tiny_st

    return build_tiny_st(tmp_path_factory.mktemp("st") / "model", dim=32, seed=0)


@pytest.fixture(scope="module")
def mclip_folder(tmp_path_factory):
    from pipeline.export.tiny_text import build_tiny_mclip

    return build_tiny_mclip(tmp_path_factory.mktemp("mclip") / "model", dim=32, seed=0)


@pytest.fixture(scope="module")
def with_st(tiny_checkpoint, st_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "repo"
    run_cli("export", "--model", str(tiny_checkpoint), "--out", str(out), "--precision", "fp32", "--precision", "int8",
            "--text-model", str(st_folder))  # fmt: skip
    return out


def _onnx(repository: Path, precision: Precision, texts: list[str]) -> np.ndarray:
    tower = load_manifest(repository).multilingual
    assert tower is not None
    tokenizer = TextTokenizer(repository / tower.text.tokenizer_file, tower.text)
    session = ort.InferenceSession(str(repository / tower.model.variants[precision].file))
    return np.concatenate([session.run(None, {"input_ids": b.input_ids, "attention_mask": b.attention_mask})[0]
                           for b in (tokenizer([t]) for t in texts)])  # fmt: skip


def test_sentence_transformers_tower_matches_encode(with_st, st_folder):
    from sentence_transformers import SentenceTransformer

    manifest = load_manifest(with_st)
    tower = manifest.multilingual
    assert tower is not None and tower.kind == "sentence-transformers" and tower.model.name == "clip_text_multilingual"
    assert set(tower.model.variants) == {Precision.FP32, Precision.INT8}
    assert (with_st / "clip_text_multilingual" / "config.pbtxt").is_file()
    assert (with_st / "clip_text_multilingual_int8" / "configs" / "cpu_test.pbtxt").is_file()
    quality = tower.model.variants[Precision.INT8].quality
    assert quality is not None and quality.figures["text_cosine_mean"] > 0  # gated, figures kept
    reference = SentenceTransformer(str(st_folder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    ours = _onnx(with_st, Precision.FP32, TEXTS)
    assert np.abs(ours - reference).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # CLIP's own towers are untouched, and a re-export of the same CLIP keeps the tower
    run_cli("export", "--model", str(manifest.source), "--out", str(with_st), "--precision", "fp32", "--precision",
            "int8")  # fmt: skip
    assert load_manifest(with_st).multilingual == tower
    assert tower.strings_ensemble and (with_st / "clip_text_multilingual_strings_int8").is_dir()


def test_a_reexport_without_the_tower_precision_drops_its_ensembles(with_st):
    """Publishing drops the tower's bytes-in ensembles (and its tokenizer model) with the variants they serve."""
    manifest = load_manifest(with_st)
    tower = manifest.multilingual
    assert tower is not None
    fp32_only = tower.model.model_copy(update={"variants": {Precision.FP32: tower.model.variants[Precision.FP32]}})
    narrower = manifest.model_copy(update={"multilingual": tower.model_copy(update={"model": fp32_only})})
    dropped = _dropped(narrower, manifest)
    assert Path("clip_text_multilingual_strings_int8") in dropped and Path("tokenize_text_multilingual") not in dropped
    assert Path("clip_text_multilingual_strings_fp32") not in dropped
    gone = _dropped(manifest.model_copy(update={"multilingual": None}), manifest)
    assert {Path("tokenize_text_multilingual"), Path("clip_text_multilingual_strings_fp32")} <= gone
    assert _dropped(manifest, manifest) == set()


def _mclip_reference(folder: Path, texts: list[str]) -> np.ndarray:
    """M-CLIP's forward as its authors publish it: transformer, attention-masked mean, LinearTransformation."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    transformer = AutoModel.from_config(AutoConfig.from_pretrained(folder / config["modelBase"]),
                                        add_pooling_layer=False).eval()  # fmt: skip
    own = {k.removeprefix("transformer."): v for k, v in weights.items() if k.startswith("transformer.")}
    transformer.load_state_dict(own, strict=False)
    linear = torch.nn.Linear(config["transformerDimensions"], config["numDims"])
    linear.load_state_dict(
        {"weight": weights["LinearTransformation.weight"], "bias": weights["LinearTransformation.bias"]}
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for text in texts:
            tok = tokenizer([text], padding=True, truncation=True, return_tensors="pt")
            embs = transformer(**tok)[0]
            att = tok["attention_mask"]
            embs = (embs * att.unsqueeze(2)).sum(dim=1) / att.sum(dim=1)[:, None]
            out.append(torch.nn.functional.normalize(linear(embs), dim=-1).numpy())
    return np.concatenate(out)


def test_mclip_tower_matches_its_forward(model_repository, mclip_folder, tmp_path):
    from pipeline.export.text_repository import export_text_tower

    out = tmp_path / "repo"
    shutil.copytree(model_repository, out)
    manifest = export_text_tower(str(mclip_folder), out, [Precision.FP32])
    assert manifest.multilingual is not None and manifest.multilingual.kind == "m-clip"
    assert manifest.fingerprint == load_manifest(model_repository).fingerprint  # CLIP's identity unchanged
    ours = _onnx(out, Precision.FP32, TEXTS)
    assert np.abs(ours - _mclip_reference(mclip_folder, TEXTS)).max() <= 1e-4


@pytest.mark.parametrize("shape", ["st", "mclip"])
def test_tokenizer_ids_match_the_reference_tokenizer(shape, st_folder, mclip_folder, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.export.text_tower import MULTILINGUAL_TOKENIZER, load_text_tower

    folder = st_folder if shape == "st" else mclip_folder
    tower = load_text_tower(str(folder))
    tower.tokenizer.backend_tokenizer.save(str(tmp_path / MULTILINGUAL_TOKENIZER))
    ours = TextTokenizer(tmp_path / MULTILINGUAL_TOKENIZER, tower.text).encode(TEXTS)
    reference = AutoTokenizer.from_pretrained(folder)(TEXTS, truncation=True, max_length=tower.text.max_length)
    assert ours == reference["input_ids"]
    assert len(ours[-1]) == tower.text.max_length  # the over-long one, cut to the limit with its end token
    assert ours[-1][-1] == tower.text.eos_token_id and ours[0][0] == tower.text.bos_token_id


def test_a_tower_of_another_dimension_is_refused(model_repository, tmp_path):
    from pipeline.export.tiny_text import build_tiny_st

    other = build_tiny_st(tmp_path / "st16", dim=16, seed=1)
    out = tmp_path / "repo"
    shutil.copytree(model_repository, out)
    before = (out / "manifest.json").read_text()
    proc = run_cli("export", "--model", str(load_manifest(out).source), "--out", str(out), "--text-model", str(other),
                   check=False)  # fmt: skip
    assert proc.returncode != 0 and "16 dimensions, the image tower's 32" in proc.stderr, proc.stderr
    assert (out / "manifest.json").read_text() == before and not (out / "clip_text_multilingual").exists()


def test_a_model_that_is_not_a_text_tower_is_refused(model_repository, tiny_checkpoint, st_folder, tmp_path):
    from pipeline.export.text_repository import export_text_tower

    out = tmp_path / "repo"
    shutil.copytree(model_repository, out)
    with pytest.raises(ModelError, match=r"not a multilingual text model.*'clip'"):
        export_text_tower(str(tiny_checkpoint), out, [Precision.FP32])  # a CLIP checkpoint is not one
    with pytest.raises(ModelError, match="no such folder"):
        export_text_tower(str(tmp_path / "missing"), out, [Precision.FP32])
    with pytest.raises(ModelError, match="export a model first"):
        export_text_tower(str(st_folder), tmp_path / "empty", [Precision.FP32])  # no CLIP export to add it to
    assert load_manifest(out).multilingual is None


ARABIC = ["تيشيرت أزرق مخطط", "خاتم ذهب", "كوب أحمر"]


async def test_queries_pick_their_tower_in_process(with_st, model_repository, st_folder):
    from sentence_transformers import SentenceTransformer

    from pipeline.config import EncoderSettings
    from pipeline.encoders.base import encode_queries
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.text_towers import TextTower

    reference = SentenceTransformer(str(st_folder), device="cpu").encode(ARABIC, normalize_embeddings=True)
    encoder = OnnxEncoder.load(with_st, EncoderSettings(precision="fp32"))
    clip_only = OnnxEncoder.load(with_st, EncoderSettings(precision="fp32", text_tower="clip"))
    try:
        assert encoder.info.multilingual == load_manifest(with_st).multilingual.fingerprint
        assert [encoder.tower_for(t) for t in ("red mug", "café 100%", ARABIC[0], "gold خاتم")] == [
            TextTower.CLIP, TextTower.CLIP, TextTower.MULTILINGUAL, TextTower.MULTILINGUAL]  # fmt: skip
        ours = await encoder.encode_texts(ARABIC, TextTower.MULTILINGUAL)
        assert np.abs(ours - reference).max() <= 1e-4
        mixed = await encode_queries(encoder, ["red mug", ARABIC[1]])  # one call per tower, input order kept
        np.testing.assert_allclose(mixed[0], (await encoder.encode_texts(["red mug"]))[0], atol=1e-6)
        np.testing.assert_allclose(mixed[1], ours[1], atol=1e-6)
        assert clip_only.info.multilingual is None and clip_only.tower_for(ARABIC[0]) == TextTower.CLIP
        french = OnnxEncoder.load(with_st, EncoderSettings(precision="fp32", query_languages=["fr"]))
        try:  # a shop that names French: a French query goes to the multilingual tower, English to CLIP's
            assert [french.tower_for(t) for t in ("chemise bleue rayée", "blue striped t-shirt")] == [
                TextTower.MULTILINGUAL, TextTower.CLIP]  # fmt: skip
            both = await encode_queries(french, ["chemise bleue rayée", "blue striped t-shirt"])
            alone = await french.encode_texts(["chemise bleue rayée"], TextTower.MULTILINGUAL)
            np.testing.assert_allclose(both[0], alone[0], atol=1e-6)
        finally:
            await french.aclose()
        with pytest.raises(ModelError, match="no multilingual text tower"):
            await clip_only.encode_texts(ARABIC, TextTower.MULTILINGUAL)
    finally:
        await encoder.aclose()
        await clip_only.aclose()
    with pytest.raises(ModelError, match="no multilingual text tower"):
        OnnxEncoder.load(model_repository, EncoderSettings(precision="fp32", text_tower="multilingual"))


async def test_arabic_queries_search_the_catalog(with_st, catalog, tmp_path, mongo_uri):
    from pipeline.stack import open_stack
    from tests.conftest import make_settings

    async with open_stack(make_settings(with_st, "edge", tmp_path, mongo_uri)) as stack:
        await stack.ingest.ingest(catalog)
        first = await stack.search.search_text(ARABIC[0], top_k=5)
        again = await stack.search.search_text(ARABIC[0], top_k=5)
        english = await stack.search.search_text("blue striped t-shirt", top_k=5)
        assert first.hits and not first.cache_hit and again.cache_hit
        assert [h.product_id for h in again.hits] == [h.product_id for h in first.hits]
        assert english.hits and not english.cache_hit
        # the Arabic query's vector is cached under the multilingual tower's fingerprint, not CLIP's
        from pipeline.cache import cache_key
        from pipeline.types import Modality

        info = stack.encoder.info
        assert info.multilingual is not None
        assert stack.cache.get(cache_key(Modality.TEXT, info.multilingual, info.precision, ARABIC[0])) is not None
        assert stack.cache.get(cache_key(Modality.TEXT, info.fingerprint, info.precision, ARABIC[0])) is None
        english_key = cache_key(Modality.TEXT, info.fingerprint, info.precision, "blue striped t-shirt")
        assert stack.cache.get(english_key) is not None
        stray = await stack.search.search_text("ქართული", top_k=5)  # a script no tokenizer covers: still answered
        assert stray.hits


async def test_a_catalog_in_another_language_has_its_titles_embedded_by_the_multilingual_tower(
    with_st, catalog, tmp_path, mongo_uri
):
    """catalog_language: the text space is the multilingual tower's (its own stamp); going back to English is a
    re-index of the titles alone, the image vectors kept."""
    from pipeline.errors import ModelMismatch
    from pipeline.stack import open_stack
    from pipeline.stores.vectors import ModelStamp
    from pipeline.text_towers import TextTower
    from pipeline.types import Modality
    from tests.conftest import make_settings

    def vectors(stored, pid, space):
        return np.stack(stored[pid][space])

    settings = make_settings(with_st, "edge", tmp_path, mongo_uri, encoder={"catalog_language": "fr"})
    async with open_stack(settings) as stack:
        info = stack.encoder.info
        assert info.titles == info.multilingual and info.title_tower is TextTower.MULTILINGUAL
        await stack.ingest.ingest(catalog)
        products = [p async for p in stack.mongo.iter_products()]
        stored = await stack.index.vectors_of([p.id for p in products])
        titles = await stack.encoder.encode_texts([p.embedding_text() for p in products], TextTower.MULTILINGUAL)
        for i, p in enumerate(products):
            np.testing.assert_allclose(vectors(stored, p.id, Modality.TEXT)[0], titles[i], atol=1e-5)
        assert stack.encoder.tower_for("blue striped t-shirt") is TextTower.MULTILINGUAL  # every query
        status = await stack.status()
        assert status["qdrant"]["titles"] == info.multilingual and status["qdrant"]["model_matches"]
        assert (await stack.search.search_text("blue striped t-shirt", top_k=3)).hits
    english = make_settings(with_st, "edge", tmp_path, mongo_uri)
    english.mongo.database = settings.mongo.database
    async with open_stack(english) as stack:
        assert stack.encoder.info.titles == "clip"
        with pytest.raises(ModelMismatch, match=r"titles embedded by the multilingual tower.*reindex"):
            await stack.search.search_text("blue striped t-shirt", top_k=3)
        assert not (await stack.status())["qdrant"]["model_matches"]
        report = await stack.ingest.reindex()
        assert report.updated == len(products) and report.copied == len(products)  # image vectors kept
        again = await stack.index.vectors_of([p.id for p in products])
        clip_titles = await stack.encoder.encode_texts([p.embedding_text() for p in products])
        for i, p in enumerate(products):
            np.testing.assert_array_equal(vectors(again, p.id, Modality.IMAGE), vectors(stored, p.id, Modality.IMAGE))
            np.testing.assert_allclose(vectors(again, p.id, Modality.TEXT)[0], clip_titles[i], atol=1e-5)
        assert (await stack.index.info()).stamp == ModelStamp.of(stack.encoder.info)
        assert (await stack.search.search_text("blue striped t-shirt", top_k=3)).hits


@pytest.mark.skipif(unsupported_reason() is not None, reason=f"tritonserver cannot run here: {unsupported_reason()}")
async def test_the_tower_on_triton_matches_in_process(with_st, tmp_path):
    from pipeline.config import EncoderSettings, Settings
    from pipeline.encoders.onnx import OnnxEncoder
    from pipeline.encoders.triton import TritonEncoder
    from pipeline.text_towers import TextTower
    from pipeline.triton.server import LocalTriton

    local = OnnxEncoder.load(with_st, EncoderSettings(precision="fp32"))
    expected = await local.encode_texts(TEXTS, TextTower.MULTILINGUAL)
    await local.aclose()
    ensemble = "clip_text_multilingual_strings_fp32"
    assert (with_st / ensemble / "config.pbtxt").is_file() and (with_st / "tokenize_text_multilingual").is_dir()
    with LocalTriton(with_st, log_file=tmp_path / "triton.log") as server:
        for send in ("tensors", "bytes"):  # token ids from the client's tokenizer; text tokenized by the server
            settings = Settings(encoder={"model_repository": with_st, "precision": "fp32"},
                                triton={"url": server.grpc_url, "send": send})  # fmt: skip
            encoder = await TritonEncoder.connect(settings)
            try:
                assert encoder.info.multilingual is not None
                vectors = await encoder.encode_texts(TEXTS, TextTower.MULTILINGUAL)
                np.testing.assert_allclose(vectors, expected, atol=1e-5)
                stats = await encoder._client.get_inference_statistics(ensemble, as_json=True)
                count = int(stats["model_stats"][0].get("inference_count", 0)) if stats["model_stats"] else 0
                assert count == (len(TEXTS) if send == "bytes" else 0), (send, stats)
            finally:
                await encoder.aclose()


def test_distill_a_student_then_export_it(tiny_checkpoint, model_repository, tmp_path):
    """`train --distill-text` on parallel titles (the demo generator's English and Arabic), then `export
    --text-model` of the student: the student's vectors move toward the teacher's, Arabic side included."""
    from pipeline.demo_catalog import COLORS, PATTERNS, SHAPES, title, title_ar

    rows = [{"source": title(c, p, s), "target": title_ar(c, p, s)} for s in SHAPES for c in COLORS for p in PATTERNS]
    parallel = tmp_path / "parallel.jsonl"
    parallel.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # a second file: a shopper's phrasings of titles, and of a kind of item (a list of sources: their centroid)
    phrasings = [{"source": r["source"], "target": f"i'm looking for a {r['source']}"} for r in rows[:40]]
    phrasings += [{"source": [title(c, "plain", s) for c in COLORS], "target": f"any {s} please"} for s in SHAPES]
    paraphrases = tmp_path / "paraphrases.jsonl"
    paraphrases.write_text("".join(json.dumps(r) + "\n" for r in phrasings))
    student = tmp_path / "student"
    run_cli("train", "--distill-text", "--model", str(tiny_checkpoint), "--parallel", str(parallel), "--parallel",
            str(paraphrases), "--out", str(student), "--epochs", "6")  # fmt: skip
    report = json.loads((student / "distill_report.json").read_text())
    assert report["pairs"] + report["heldout"] == len(rows) + len(phrasings) and report["heldout"] > 0
    # every 10th English title in order of appearance leaves with all its pairs (what bench multilingual reads)
    assert set(report["heldout_sources"]) == {r["source"] for r in rows[::10]}
    assert report["heldout"] == len(rows[::10]) + sum(p["source"] in report["heldout_sources"] for p in phrasings)
    assert report["cosine"]["target"] > 0.3, report  # learnt from nothing (a random student starts near 0)
    out = tmp_path / "repo"
    shutil.copytree(model_repository, out)
    run_cli("export", "--model", str(load_manifest(out).source), "--out", str(out), "--precision", "fp32",
            "--text-model", str(student))  # fmt: skip
    assert load_manifest(out).multilingual is not None


def test_distill_refuses_bad_parallel_files(tiny_checkpoint, tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text('{"source": "red mug", "target": "كوب أحمر"}\n' * 3)
    proc = run_cli("train", "--distill-text", "--model", str(tiny_checkpoint), "--parallel", str(few), "--out",
                   str(tmp_path / "s"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "needs at least 8" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "red mug", "target": "كوب أحمر"}\n{"source": "no target"}\n')
    proc = run_cli("train", "--distill-text", "--model", str(tiny_checkpoint), "--parallel", str(bad), "--out",
                   str(tmp_path / "s"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "bad.jsonl:2" in proc.stderr
    bad.write_text('{"source": "red mug", "target": "كوب أحمر"}\n{"source": ["red mug", 3], "target": "a mug"}\n')
    proc = run_cli("train", "--distill-text", "--model", str(tiny_checkpoint), "--parallel", str(bad), "--out",
                   str(tmp_path / "s"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "bad.jsonl:2" in proc.stderr and "list of texts" in proc.stderr
    one = tmp_path / "one.jsonl"  # every pair the phrasing of one title: nothing would be left to learn from
    one.write_text("".join(json.dumps({"source": "red mug", "target": f"a red cup {i}"}) + "\n" for i in range(9)))
    proc = run_cli("train", "--distill-text", "--model", str(tiny_checkpoint), "--parallel", str(one), "--out",
                   str(tmp_path / "s"), check=False)  # fmt: skip
    assert proc.returncode != 0 and "all held out" in proc.stderr
    assert not (tmp_path / "s").exists()
