"""What a shopper types for a demo product, beyond its title: synonyms, patterns said another way, what it is for.

Training captions (``captions.jsonl`` beside the demo catalog: ``{"id", "texts"}`` per product, which ``train``
samples among with the title and the description) come from :data:`TRAIN_FRAMES`, which name the colour, the
pattern (unless plain) and the kind of item (a caption that describes its own product's look), and from
:data:`KIND_FRAMES`, which name the kind of item only (``{"text", "category"}``: it fits every product of that
kind, so no such product is its negative in training).
Held-out queries (``phrasings_heldout.jsonl``) come from :data:`HELDOUT_FRAMES`, sentence frames the training
captions never use, and some leave the colour or the pattern out ("a mug for my morning coffee"): a drawing
answers such a query when it has everything the query names (``category``, and ``color`` / ``pattern`` when not
null).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Words a shopper uses for each kind of item, the first being the catalog's own.
NOUNS = {
    "t-shirt": ("t-shirt", "tee", "tshirt", "top", "shirt"),
    "mug": ("mug", "coffee mug", "cup", "tea cup"),
    "cap": ("cap", "baseball cap", "hat"),
    "sneaker": ("sneaker", "trainer", "running shoe", "sports shoe"),
    "tote bag": ("tote bag", "tote", "shopping bag", "canvas bag"),
    "vase": ("vase", "flower vase", "flower pot"),
}
# The pattern as an adjective, and as "with ..." (plain: nothing, or "plain" / "solid").
PATTERN_ADJ = {
    "plain": ("", "plain", "solid"),
    "striped": ("striped", "stripy", "pinstriped"),
    "dotted": ("dotted", "polka dot", "spotted"),
    "checked": ("checked", "checkered", "plaid"),
}
PATTERN_WITH = {
    "plain": ("",),
    "striped": ("with stripes", "with lines"),
    "dotted": ("with dots", "with polka dots", "with spots"),
    "checked": ("with checks", "with squares", "with a check pattern"),
}
USES = {
    "t-shirt": ("to wear in summer", "for the gym", "for everyday wear"),
    "mug": ("for my morning coffee", "for tea", "to drink coffee from"),
    "cap": ("to keep the sun off", "for a sunny day", "for baseball"),
    "sneaker": ("for running", "for jogging", "to walk all day"),
    "tote bag": ("for groceries", "to carry my books", "for the beach"),
    "vase": ("for flowers", "for a bouquet", "for my living room"),
}

# Every training frame names colour {c}, pattern ({a}: adjective, {w}: "with ..."), item {n}; {u}: a use.
TRAIN_FRAMES = (
    "{c} {a} {n}",
    "a {c} {n} {w}",
    "i'm looking for a {c} {a} {n}",
    "{c} {a} {n} {u}",
    "{n} in {c} {w}",
    "a {a} {n}, {c}",
)
# Training frames that name the kind of item only.
KIND_FRAMES = ("{n}", "i'm looking for a {n}")
# Frames the training captions never use; the second field says what the query names.
HELDOUT_FRAMES = (
    ("a {n} {u}", "category"),
    ("show me {n}s {u}", "category"),
    ("something {c} {u}", "category+color"),
    ("do you have a {c} {n}?", "category+color"),
    ("i need a {n} {u} in {c} {w}", "category+color+pattern"),
    ("{n}, {c}, {a} please", "category+color+pattern"),
)


@dataclass(frozen=True)
class HeldoutQuery:
    text: str
    frame: str
    category: str
    color: str | None
    pattern: str | None


def _clean(text: str) -> str:
    return " ".join(text.replace(" ,", ",").split())


def _words(category: str, color: str, pattern: str, rng: random.Random) -> dict[str, str]:
    return {"c": color, "a": rng.choice(PATTERN_ADJ[pattern]), "w": rng.choice(PATTERN_WITH[pattern]),
            "n": rng.choice(NOUNS[category]), "u": rng.choice(USES[category])}  # fmt: skip


def captions(category: str, color: str, pattern: str, rng: random.Random, n: int = 6,
             kind_only: int = 2) -> list[str | dict[str, str]]:  # fmt: skip
    """``n`` distinct training captions describing one product's look and ``kind_only`` naming its kind of item
    only (``{"text", "category"}``); fewer when the frames and words run out."""
    out: list[str | dict[str, str]] = []
    for frames, count in ((TRAIN_FRAMES, n), (KIND_FRAMES, kind_only)):
        texts: list[str] = []
        for _ in range(8 * count):
            if len(texts) == count:
                break
            text = _clean(rng.choice(frames).format(**_words(category, color, pattern, rng)))
            if text not in texts:
                texts.append(text)
        out += texts if frames is TRAIN_FRAMES else [{"text": t, "category": category} for t in texts]
    return out


def heldout_queries(categories: list[str], colors: list[str], patterns: list[str],
                    seed: int = 0) -> list[HeldoutQuery]:  # fmt: skip
    """Queries in the held-out frames: one per frame and category x colour x pattern, de-duplicated (a frame
    that leaves the pattern out gives one query per category x colour)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[HeldoutQuery] = []
    for frame, names in HELDOUT_FRAMES:
        for category in categories:
            for color in colors:
                for pattern in patterns:
                    words = _words(category, color, pattern, rng)
                    text = _clean(frame.format(**words))
                    if text in seen:
                        continue
                    seen.add(text)
                    # "in blue" says nothing of the pattern: such a query asks for any blue one
                    said = ("{a}" in frame and words["a"]) or ("{w}" in frame and words["w"])
                    out.append(HeldoutQuery(text, frame, category, color if "color" in names else None,
                                            pattern if "pattern" in names and said else None))  # fmt: skip
    return out
