"""Which text tower a query goes to under the encoder settings (no model needed: the decision alone)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.config import EncoderSettings, Settings
from pipeline.errors import ModelError
from pipeline.text_towers import TextTower, TowerPicker

CLIP, ML = TextTower.CLIP, TextTower.MULTILINGUAL
ENGLISH = ["blue striped t-shirt", "a mug for my morning coffee", "leather shoes", "red mug"]
OTHERS = ["chemise bleue rayée", "zapatos de cuero", "schwarze Handtasche", "une tasse pour mon café du matin"]


def test_by_script_alone_by_default():
    pick = TowerPicker.of(EncoderSettings(), has_multilingual=True)
    assert [pick(t) for t in ENGLISH] == [CLIP] * 4
    assert [pick(t) for t in OTHERS] == [CLIP] * 4  # Latin script: no guess without query_languages
    assert pick("خاتم ذهب") is ML and pick("gold خاتم") is ML and pick("красная кружка") is ML
    assert TowerPicker.of(EncoderSettings(), has_multilingual=False)("خاتم ذهب") is CLIP
    assert TowerPicker.of(EncoderSettings(text_tower="clip"), True)("خاتم ذهب") is CLIP
    assert TowerPicker.of(EncoderSettings(text_tower="multilingual"), True)("red mug") is ML


def test_the_shops_languages_are_told_from_english():
    pick = TowerPicker.of(EncoderSettings(query_languages=["fr", "ES", "de"]), has_multilingual=True)
    assert [pick(t) for t in ENGLISH] == [CLIP] * 4
    assert [pick(t) for t in OTHERS] == [ML] * 4
    assert pick("") is CLIP and pick("42") is CLIP and pick("🙂") is CLIP  # nothing to tell: CLIP's
    # a short query the guess is less sure of goes where the confidence setting says
    assert TowerPicker.of(EncoderSettings(query_languages=["es"], language_confidence=0.5), True)("taza roja") is ML
    assert TowerPicker.of(EncoderSettings(query_languages=["es"], language_confidence=0.99), True)("taza roja") is CLIP


def test_a_catalog_in_another_language_sends_every_query_to_the_multilingual_tower():
    pick = TowerPicker.of(EncoderSettings(catalog_language="FR"), has_multilingual=True)
    assert [pick(t) for t in ENGLISH + OTHERS] == [ML] * 8 and pick.titles is ML
    assert TowerPicker.of(EncoderSettings(), True).titles is CLIP
    # a model without the tower (a fine-tuned CLIP) cannot serve a French catalog, unless CLIP's is asked for
    with pytest.raises(ModelError, match=r"CATALOG_LANGUAGE=fr needs a multilingual text tower.*--text-model"):
        TowerPicker.of(EncoderSettings(catalog_language="fr"), has_multilingual=False)
    clip = TowerPicker.of(EncoderSettings(catalog_language="fr", text_tower="clip"), True)
    assert clip("tasse") is CLIP and clip.titles is CLIP


def test_bad_language_settings_are_refused(monkeypatch):
    with pytest.raises(ValidationError, match=r"no language model for \['xx'\]"):
        EncoderSettings(query_languages=["fr", "xx"])
    with pytest.raises(ValidationError):
        EncoderSettings(catalog_language="French")
    with pytest.raises(ValidationError):
        EncoderSettings(language_confidence=1.5)
    monkeypatch.setenv("PIPELINE__ENCODER__CATALOG_LANGUAGE", "EN")
    for value, expected in (('["fr", "de"]', ["fr", "de"]), ("fr, DE", ["fr", "de"]), ("es", ["es"]), ("", [])):
        monkeypatch.setenv("PIPELINE__ENCODER__QUERY_LANGUAGES", value)
        assert Settings().encoder.query_languages == expected
    assert Settings().encoder.catalog_language == "en"
    monkeypatch.setenv("PIPELINE__ENCODER__QUERY_LANGUAGES", "fr,xx")
    with pytest.raises(ValidationError, match="no language model"):
        Settings()
