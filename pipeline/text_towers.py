"""Which text tower embeds a query: CLIP's own (English in practice) or the multilingual one exported beside it
(``export --text-model``), whose vectors live in the same space.

``PIPELINE__ENCODER__TEXT_TOWER``: ``clip``; ``multilingual`` (every query); ``auto`` (the default):
multilingual when the text has a letter outside the Latin script (Arabic, Cyrillic, CJK, ...) and the model has
such a tower, CLIP's otherwise. Latin-script text in another language (French, Turkish) is not told apart from
English here: set ``multilingual`` for such a shop.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum
from functools import lru_cache


class TextTower(StrEnum):
    CLIP = "clip"
    MULTILINGUAL = "multilingual"


@lru_cache(maxsize=4096)
def _latin(char: str) -> bool:
    return unicodedata.name(char, "").startswith("LATIN")


def outside_latin(text: str) -> bool:
    """Whether ``text`` has a letter that is not Latin (digits, punctuation and emoji do not count)."""
    return any(char.isalpha() and not _latin(char) for char in text)


def pick_tower(text: str, setting: str, has_multilingual: bool) -> TextTower:
    """The tower for one query under ``setting`` (``clip``, ``multilingual`` or ``auto``)."""
    if not has_multilingual or setting == TextTower.CLIP:
        return TextTower.CLIP
    if setting == TextTower.MULTILINGUAL or outside_latin(text):
        return TextTower.MULTILINGUAL
    return TextTower.CLIP
