"""Which text tower embeds a query: CLIP's own (English in practice) or the multilingual one exported beside it
(``export --text-model``), whose vectors live in the same space.

``PIPELINE__ENCODER__TEXT_TOWER``: ``clip``; ``multilingual`` (every query); ``auto`` (the default), which picks
the multilingual tower, when the model has one, for

- every query when the catalog is not English (``PIPELINE__ENCODER__CATALOG_LANGUAGE``, an ISO 639-1 code);
- text with a letter outside the Latin script (Arabic, Cyrillic, CJK, ...);
- Latin-script text in one of the languages the shop's shoppers type besides English
  (``PIPELINE__ENCODER__QUERY_LANGUAGES``, e.g. ``["fr", "es", "de"]``), as told by ``py3langid`` (langid.py's
  naive Bayes over byte n-grams, 97 languages) restricted to English and those languages, when it is at least
  ``PIPELINE__ENCODER__LANGUAGE_CONFIDENCE`` sure. Short queries are hard to tell apart ("green checked vase" is
  Dutch to langid over all 97 languages), so detection stays off until the shop names its languages: a smaller
  set is a much easier question (``python -m bench languages`` measures both).

A query sent to the multilingual tower by mistake is still answered in the same space (that tower is taught to
embed English as CLIP's does), only less precisely: the costs of the two mistakes are not symmetric.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from collections.abc import Sequence
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.errors import ModelError

if TYPE_CHECKING:
    from pipeline.config import EncoderSettings

ENGLISH = "en"
log = logging.getLogger(__name__)


class TextTower(StrEnum):
    CLIP = "clip"
    MULTILINGUAL = "multilingual"


@lru_cache(maxsize=4096)
def _latin(char: str) -> bool:
    return unicodedata.name(char, "").startswith("LATIN")


def outside_latin(text: str) -> bool:
    """Whether ``text`` has a letter that is not Latin (digits, punctuation and emoji do not count)."""
    return any(char.isalpha() and not _latin(char) for char in text)


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


def known_languages() -> set[str]:
    """The ISO 639-1 codes the language model tells apart."""
    return set(_identifier().nb_classes)


class LanguageGuesser:
    """English or one of ``languages`` for a Latin-script text, with langid's normalised probability."""

    def __init__(self, languages: Sequence[str]) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.languages = sorted({ENGLISH, *languages})
        unknown = set(self.languages) - known_languages()
        if unknown:
            raise ValueError(f"no language model for {sorted(unknown)}: ISO 639-1 codes such as fr, es, de")
        # its own identifier: restricting it to these languages changes its arrays
        self._identifier: Any = LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)
        self._identifier.set_languages(self.languages)
        self._lock = threading.Lock()  # the identifier keeps its restricted arrays on itself

    def guess(self, text: str) -> tuple[str, float]:
        with self._lock:
            language, probability = self._identifier.classify(text)
        return str(language), float(probability)


@lru_cache(maxsize=8)
def language_guesser(languages: tuple[str, ...]) -> LanguageGuesser:
    """One guesser per language set (its model takes ~0.2 s and a few MB to load)."""
    return LanguageGuesser(languages)


class TowerPicker:
    """The tower for each query under the encoder settings (see the module docstring)."""

    def __init__(self, setting: str, has_multilingual: bool, catalog_language: str = ENGLISH,
                 query_languages: Sequence[str] = (), confidence: float = 0.9) -> None:  # fmt: skip
        other_catalog = catalog_language.lower() != ENGLISH
        if other_catalog and setting != TextTower.CLIP and not has_multilingual:
            raise ModelError(
                f"PIPELINE__ENCODER__CATALOG_LANGUAGE={catalog_language} needs a multilingual text tower to embed "
                "the catalog's titles and queries, and this model serves none: export it with --text-model (a "
                "fine-tuned CLIP drops the tower distilled into the old space), or set TEXT_TOWER=clip to embed "
                "them with CLIP's English tower anyway"
            )
        if other_catalog and setting == TextTower.CLIP:
            log.warning("catalog language %s, text tower clip: titles and queries embedded by CLIP's English tower",
                        catalog_language)  # fmt: skip
        self.setting = setting if has_multilingual else TextTower.CLIP.value
        self.always = self.setting == TextTower.MULTILINGUAL or (
            self.setting == "auto" and catalog_language.lower() != ENGLISH
        )
        others = tuple(sorted({lang.lower() for lang in query_languages} - {ENGLISH}))
        self.confidence = confidence
        # The tower for the catalog's titles: its language's, unless the setting says CLIP's alone.
        self.titles = (
            TextTower.MULTILINGUAL
            if self.setting != TextTower.CLIP and catalog_language.lower() != ENGLISH
            else TextTower.CLIP
        )
        self._guesser = language_guesser(others) if others and self.setting == "auto" and not self.always else None

    @classmethod
    def of(cls, settings: EncoderSettings, has_multilingual: bool) -> TowerPicker:
        return cls(settings.text_tower, has_multilingual, settings.catalog_language, settings.query_languages,
                   settings.language_confidence)  # fmt: skip

    def __call__(self, text: str) -> TextTower:
        if self.setting == TextTower.CLIP:
            return TextTower.CLIP
        if self.always or outside_latin(text):
            return TextTower.MULTILINGUAL
        if self._guesser is not None:
            language, probability = self._guesser.guess(text)
            if language != ENGLISH and probability >= self.confidence:
                return TextTower.MULTILINGUAL
        return TextTower.CLIP
