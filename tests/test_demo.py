"""The offline demo's pieces: the drawn catalog and the contrastive trainer (a short run on a subset)."""

from __future__ import annotations

import json

import pytest

from pipeline.catalog import read_catalog
from pipeline.demo_catalog import COLORS, PATTERNS, SHAPES, build_demo_catalog
from pipeline.errors import InvalidInput
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return build_demo_catalog(tmp_path_factory.mktemp("demo"), per_combination=1, heldout_per_combination=1)


def test_demo_catalog_is_valid_and_complete(small_demo):
    rows = list(read_catalog(small_demo.catalog))
    assert all(r.product is not None for r in rows)
    combos = len(SHAPES) * len(COLORS) * len(PATTERNS)
    assert small_demo.products == len(rows) == combos and small_demo.heldout == combos
    names = {r.product.name.lower() for r in rows}
    assert "blue striped t-shirt" in names and "red mug" in names  # plain items are named without the pattern
    held = [json.loads(line) for line in small_demo.heldout_file.read_text().splitlines()]
    assert all((small_demo.catalog.parent / h["image"]).is_file() for h in held)
    # held-out drawings are new images, not copies of catalog images
    catalog_bytes = {(small_demo.catalog.parent / i).read_bytes() for r in rows for i in r.product.images}
    assert not any((small_demo.catalog.parent / h["image"]).read_bytes() in catalog_bytes for h in held)
    # Arabic beside English: the noun first, adjectives agreeing with it (a feminine noun, feminine adjectives)
    arabic = {r.product.name.lower(): r.product.attributes["name_ar"] for r in rows}
    assert arabic["blue striped t-shirt"] == "تيشيرت أزرق مخطط"
    assert arabic["blue striped tote bag"] == "حقيبة قماشية زرقاء مخططة" and arabic["red mug"] == "كوب أحمر"
    assert all(h["title_ar"] == arabic[h["title"]] for h in held)
    parallel = [json.loads(line) for line in (small_demo.catalog.parent / "parallel.jsonl").read_text().splitlines()]
    assert len(parallel) == combos and {"source": "red mug", "target": "كوب أحمر"} in parallel


def test_demo_captions_describe_their_product_and_heldout_phrasings_use_other_frames(small_demo):
    from pipeline.demo_phrasings import HELDOUT_FRAMES, NOUNS, PATTERN_ADJ, PATTERN_WITH, TRAIN_FRAMES
    from pipeline.export.finetune import read_captions

    folder = small_demo.catalog.parent
    products = {r.product.id: r.product for r in read_catalog(small_demo.catalog)}
    captions = read_captions(folder / "captions.jsonl")
    assert set(captions) == set(products)
    for pid, texts in captions.items():
        p = products[pid]
        assert len(texts) >= 6 and len(set(texts)) == len(texts)
        pattern = p.attributes["pattern"]
        words = [w for w in PATTERN_ADJ[pattern] + PATTERN_WITH[pattern] if w]
        for c in texts:  # a caption names the colour, the kind of item and (unless plain) the pattern ...
            assert any(n in c.text for n in NOUNS[p.category]), c
            if c.names is None:
                assert p.color in c.text and (pattern == "plain" or any(w in c.text for w in words)), c
            else:  # ... or says that it names the kind of item only
                assert c.names == (("category", p.category),) and p.color not in c.text, c
        assert sum(c.names is not None for c in texts) == 2
    queries = [json.loads(line) for line in (folder / "phrasings_heldout.jsonl").read_text().splitlines()]
    trained = {c.text for texts in captions.values() for c in texts}
    assert len(queries) > 300 and not trained & {q["text"] for q in queries}
    assert {q["frame"] for q in queries} == {f for f, _ in HELDOUT_FRAMES} and not set(TRAIN_FRAMES) & {
        q["frame"] for q in queries}  # fmt: skip
    mug = [q for q in queries if q["text"] == "a mug for my morning coffee"]
    assert mug == [{"text": "a mug for my morning coffee", "frame": "a {n} {u}", "category": "mug", "color": None,
                    "pattern": None}]  # fmt: skip
    # "in blue" names no pattern: such a query does not ask for a plain one
    assert all(q["pattern"] is None for q in queries if q["frame"] == "do you have a {c} {n}?")
    # the distillation's phrasings: each product's captions under its title, the kind-only ones under every title
    # of its kind (a centroid), none of them a held-out phrasing
    from pipeline.export.distill import read_parallel

    pairs = read_parallel(folder / "paraphrases.jsonl")
    for p in products.values():
        for c in captions[p.id]:
            sources = (
                (p.name.lower(),)
                if c.names is None
                else tuple(t.lower() for t in sorted({q.name for q in products.values() if q.category == p.category}))
            )
            assert any(sorted(s) == sorted(sources) and t == c.text for s, t in pairs), (p.id, c.text)  # fmt: skip
    assert len({t for _, t in pairs}) <= len(trained) and not {t for _, t in pairs} & {q["text"] for q in queries}


def test_captions_file_errors_are_clear(small_demo, tmp_path):
    from pipeline.export.finetune import captioned_pairs, catalog_pairs, read_captions, train

    bad = tmp_path / "captions.jsonl"
    bad.write_text('{"id": "x", "texts": ["a", {"text": "a mug", "category": "mug"}]}\n{"id": "y"}\n')
    with pytest.raises(InvalidInput, match=r"captions.jsonl:2: not a caption row"):
        read_captions(bad)
    bad.write_text('{"id": "x", "texts": [{"text": "a mug", "pattern": "plain"}]}\n')
    with pytest.raises(InvalidInput, match="names neither a category nor a colour"):
        read_captions(bad)
    empty = tmp_path / "none.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidInput, match="no captions"):
        train("small", small_demo.catalog, tmp_path / "m", captions=empty, log=lambda _m: None)
    with pytest.raises(InvalidInput, match="no such captions file"):
        captioned_pairs(small_demo.catalog, tmp_path / "missing.jsonl")
    # auto: the captions beside the catalog, titles only (one hard-negative axis) where there are none
    rows, n = captioned_pairs(small_demo.catalog, "auto")
    assert n > 0 and all(len(r["texts"]) >= 8 for r in rows)
    bare = tmp_path / "bare" / "catalog.jsonl"
    bare.parent.mkdir()
    bare.write_text(small_demo.catalog.read_text())
    rows, n = captioned_pairs(bare, "auto")
    assert n == 0 and all(len(r["texts"]) == 1 for r in rows)
    assert captioned_pairs(small_demo.catalog, None)[1] == 0
    # held-out phrasings: a field left out is one the query does not name; a row without text is refused
    from pipeline.export.train_eval import read_phrasings

    phrasings = tmp_path / "phrasings.jsonl"
    phrasings.write_text('{"text": "a mug for tea", "category": "mug"}\n\n')
    assert read_phrasings(phrasings) == [{"text": "a mug for tea", "category": "mug"}]
    phrasings.write_text('{"text": "a mug"}\n{"category": "mug"}\n')
    with pytest.raises(InvalidInput, match=r"phrasings.jsonl:2: not a phrasing row"):
        read_phrasings(phrasings)
    # a product's rows carry its title first, then description and captions; --captions none: no captions
    rows = catalog_pairs(small_demo.catalog, read_captions(small_demo.catalog.parent / "captions.jsonl"))
    assert all(r["texts"][0].text == r["text"] and len(r["texts"]) >= 8 for r in rows)
    assert all(len(r["texts"]) == 1 for r in catalog_pairs(small_demo.catalog))
    # in a batch, a caption is not the negative of a photo it describes: its own look's, or any of its kind
    by_title = {r["text"]: r for r in rows}
    blue_mug, red_mug, red_vase = by_title["blue striped mug"], by_title["red mug"], by_title["red vase"]
    full = next(c for c in blue_mug["texts"] if c.names is None and c.text != "blue striped mug")
    kind = next(c for c in blue_mug["texts"] if c.names is not None)
    assert full.fits("blue striped mug", blue_mug) and not full.fits("blue striped mug", red_mug)
    assert kind.fits("blue striped mug", red_mug) and not kind.fits("blue striped mug", red_vase)


def test_training_improves_heldout_recall_and_exports(small_demo, tmp_path):
    from pipeline.export.finetune import train

    out = tmp_path / "model"
    report = train("small", small_demo.catalog, out, epochs=10, batch_size=32, captions="auto", log=lambda _m: None)
    assert report.pairs >= 192 and report.heldout == 192 and report.captions == 192
    assert report.after["recall@10"] >= report.before["recall@10"] + 0.30, (report.before, report.after)
    # held-out shopper phrasings (frames never trained on) are measured too, and learnt
    gain = report.phrasings_after["phrasing recall@10"] - report.phrasings_before["phrasing recall@10"]
    assert gain >= 0.10, (report.phrasings_before, report.phrasings_after)
    assert json.loads((out / "train_report.json").read_text())["after"] == report.after
    repo = tmp_path / "repo"
    run_cli("export", "--model", str(out), "--out", str(repo), "--precision", "int8")
    doc = json.loads(run_cli("embed", "--model-repository", str(repo), "--text", "blue striped t-shirt").stdout)
    assert doc["dim"] == 128 and len(doc["vectors"]) == 1


def test_training_refuses_bad_inputs(tmp_path):
    from pipeline.export.finetune import train

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"broken": \n')
    with pytest.raises(InvalidInput, match="no valid rows"):
        train("small", empty, tmp_path / "m", log=lambda _m: None)
    proc = run_cli("train", "--model", str(tmp_path), "--catalog", str(empty), "--out", str(tmp_path / "m"),
                   check=False)  # fmt: skip
    assert proc.returncode == 1 and "error:" in proc.stderr


def test_fine_tunes_an_existing_checkpoint(small_demo, tiny_checkpoint, tmp_path):
    """The path a real CLIP takes (hub id or folder): load, fine-tune, save a folder export accepts."""
    from transformers import CLIPModel

    from pipeline.export.finetune import train

    out = tmp_path / "tuned"
    report = train(str(tiny_checkpoint), small_demo.catalog, out, epochs=1, batch_size=32, lr=1e-3,
                   log=lambda _m: None)  # fmt: skip
    assert report.pairs >= 192 and set(report.after) == {"recall@1", "recall@5", "recall@10"}
    before = CLIPModel.from_pretrained(tiny_checkpoint).text_projection.weight
    after = CLIPModel.from_pretrained(out).text_projection.weight
    assert before.shape == after.shape and not (before == after).all()  # the weights moved
    run_cli("export", "--model", str(out), "--out", str(tmp_path / "repo"), "--precision", "fp32")
