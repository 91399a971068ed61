"""``python -m bench languages``: how often ``auto`` sends a query to the right text tower.

English queries: the demo catalog's 192 title templates, its 749 held-out shopper phrasings and its training
captions (all generated, no files needed). Other-language queries: 54 product queries written for this benchmark
in French, Spanish, German (ten each), Italian, Portuguese, Turkish, Dutch, Polish, Vietnamese and Indonesian/Malay (the
``FOREIGN`` list below, the same words as the demo's: colours, patterns, kinds). For each configuration the table
gives the share of each set sent to the multilingual tower (English: lower is better; the others: higher is
better) and the median time of one decision. Saved to bench/results/languages.md.
"""

from __future__ import annotations

import random
import statistics
import time

from bench.common import show

FOREIGN = {
    "fr": ["chemise bleue rayée", "sac à main noir", "tasse rouge à pois", "vase vert à carreaux", "t-shirt blanc uni",
           "une tasse pour mon café du matin", "casquette jaune", "baskets roses à pois", "un cadeau pour ma mère",
           "sac cabas orange à rayures"],
    "es": ["camiseta azul a rayas", "zapatos de cuero", "taza roja", "bolso negro de mano", "jarrón verde a cuadros",
           "una taza para mi café", "gorra amarilla", "zapatillas rosas de lunares", "un regalo para mi madre",
           "bolsa de tela naranja con rayas"],
    "de": ["blaues gestreiftes T-Shirt", "rote Tasse mit Punkten", "schwarze Handtasche", "grüne karierte Vase",
           "eine Tasse für meinen Morgenkaffee", "gelbe Mütze", "rosa gepunktete Turnschuhe",
           "ein Geschenk für meine Mutter", "orange gestreifte Einkaufstasche", "weiße Kaffeetasse"],
    "it": ["maglietta blu a righe", "tazza rossa a pois", "borsa nera", "vaso verde a quadri",
           "una tazza per il caffè"],
    "pt": ["camiseta azul listrada", "caneca vermelha de bolinhas", "bolsa preta", "vaso verde xadrez"],
    "tr": ["kırmızı kupa", "mavi çizgili tişört", "siyah çanta", "yeşil ekoseli vazo"],
    "nl": ["blauw gestreept t-shirt", "rode mok met stippen", "zwarte handtas"],
    "pl": ["niebieska koszulka w paski", "czerwony kubek w kropki", "czarna torebka"],
    "vi": ["áo thun xanh sọc", "cốc đỏ chấm bi"],
    "id": ["kaos biru bergaris", "tas hitam", "mug merah"],
}  # fmt: skip


def _english() -> dict[str, list[str]]:
    from pipeline.demo_catalog import COLORS, PATTERNS, PRICES
    from pipeline.demo_phrasings import captions, heldout_queries

    kinds, colors = list(PRICES), list(COLORS)
    titles = [
        " ".join(w for w in (c, "" if p == "plain" else p, k) if w) for k in kinds for c in colors for p in PATTERNS
    ]
    rng = random.Random(0)
    caps = [t if isinstance(t, str) else str(t["text"])
            for k in kinds for c in colors for p in PATTERNS for t in captions(k, c, p, rng)]  # fmt: skip
    held = [q.text for q in heldout_queries(kinds, colors, list(PATTERNS))]
    return {"titles": titles, "held-out phrasings": held, "captions": caps}


def run() -> None:
    from pipeline.text_towers import TextTower, TowerPicker, known_languages

    english = _english()
    everything = sorted(known_languages())
    named = sorted(FOREIGN)
    configs = [
        ("script only (query_languages empty: the default)", [], 0.9),
        ("+ the 10 languages of the other set, confidence 0.9", named, 0.9),
        ("+ fr, es, de (a shop's own), confidence 0.9", ["fr", "es", "de"], 0.9),
        ("+ all 97 langid languages, confidence 0.9", everything, 0.9),
        ("+ all 97 langid languages, confidence 0.99", everything, 0.99),
    ]
    rows = []
    for name, languages, confidence in configs:
        pick = TowerPicker("auto", True, query_languages=languages, confidence=confidence)
        shares, times = [], []
        for texts in english.values():
            shares.append(sum(pick(t) is TextTower.MULTILINGUAL for t in texts) / len(texts))
        for language in ("fr", "es", "de"):
            texts = FOREIGN[language]
            shares.append(sum(pick(t) is TextTower.MULTILINGUAL for t in texts) / len(texts))
        foreign = [t for texts in FOREIGN.values() for t in texts]
        shares.append(sum(pick(t) is TextTower.MULTILINGUAL for t in foreign) / len(foreign))
        for t in english["held-out phrasings"][:300] + foreign:
            start = time.perf_counter()
            pick(t)
            times.append(time.perf_counter() - start)
        rows.append([name, *(f"{s:.1%}" for s in shares), f"{statistics.median(times) * 1e6:.0f}"])
    sizes = {k: len(v) for k, v in english.items()}
    headers = ["auto, with", *(f"English {k} ({n})" for k, n in sizes.items()),
               *(f"{lang} ({len(FOREIGN[lang])})" for lang in ("fr", "es", "de")),
               f"all other-language ({sum(len(v) for v in FOREIGN.values())})", "median µs / query"]  # fmt: skip
    show("Text tower for each query: share sent to the multilingual tower", headers, rows, "languages",
         "English columns: lower is better (CLIP's own tower is the better one for English); the others: higher "
         "is better. Short queries are hard for a 97-language guesser; naming the shop's languages makes it an easy "
         "question.")  # fmt: skip
