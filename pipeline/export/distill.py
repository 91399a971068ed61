"""``python -m pipeline train --distill-text``: a multilingual student distilled into a CLIP's text space.

Parallel sentences (JSON lines ``{"source": English, "target": a translation}``) teach a student text encoder
to put both sides where the teacher (the CLIP's own text tower) puts the English one: the teacher embeds the
English sentence, the student learns to produce that vector from the English and from the translated sentence
(mean squared error between unit vectors). This is how sentence-transformers' ``clip-ViT-B-32-multilingual-v1``
was made, at a much smaller scale. The student's queries then search the image vectors the teacher's image
tower made, in any language it was taught.

The target side need not be a translation: a shopper's phrasing of the source ("a cup for my morning coffee,
blue with stripes" for "blue striped mug") teaches the student the shop's words in the teacher's space, which
a small CLIP trained on titles cannot learn without losing its titles. A source may be a list of English
texts: the target then aims at the mean of their vectors (the centroid of every title of a kind of item, for
"i'm looking for a cup"); such a pair has no source side to learn.

The student is a sentence-transformers folder (transformer → mean pooling → Dense to the teacher's dimension),
which ``export --text-model`` reads. ``--student small`` builds a compact DistilBERT from a config with a
WordPiece tokenizer trained on both sides of the parallel sentences (the offline demo); a sentence-transformers
folder or hub id continues from that model (with a real CLIP, e.g. ``clip-ViT-B-32-multilingual-v1``).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InvalidInput, ModelError
from pipeline.export.finetune import SMALL, Log


@dataclass
class DistillReport:
    pairs: int
    heldout: int
    epochs: int
    seconds: float
    cosine: dict[str, float]  # mean cosine student↔teacher on held-out pairs: "source" and "target" sides
    heldout_sources: list[str]  # the English texts held out with all their pairs (single-text sources)


Pair = tuple[tuple[str, ...], str]  # the teacher's English text(s), the text the student learns to place there


def read_parallel(paths: Path | list[Path]) -> list[Pair]:
    """``(sources, target)`` pairs from JSON-lines files (``source``: a text or a list of texts); a malformed line
    is an error naming it."""
    pairs: list[Pair] = []
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                source, target = row["source"], str(row["target"]).strip()
                texts = [source] if isinstance(source, str) else source
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise TypeError("source is neither a text nor a list of texts")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidInput(f'{path}:{n}: expected {{"source": ..., "target": ...}} ({exc})') from exc
            stripped = [t.strip() for t in texts if t.strip()]
            sources = tuple(sorted(set(stripped))) if len(stripped) > 1 else tuple(stripped)  # a set of texts: one key
            if sources and target:
                pairs.append((sources, target))
    if len(pairs) < 8:
        raise InvalidInput(f"{', '.join(map(str, files))}: {len(pairs)} parallel pairs; distillation needs at least 8")
    return pairs


def _teacher(source: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPTokenizer

    from pipeline.export.repository import read_clip_config, resolve_source

    folder = resolve_source(source)
    read_clip_config(folder)
    return CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder)


def _small_student(out: Path, texts: list[str], dim: int) -> Any:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import DistilBertConfig, DistilBertModel

    from pipeline.export.tiny_text import train_wordpiece

    base = out.parent / f".{out.name}-base"
    train_wordpiece(base, vocab_size=2000, corpus=texts * 2)
    vocab = json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    config = DistilBertConfig(vocab_size=len(vocab), dim=192, hidden_dim=384, n_layers=3, n_heads=4,
                              max_position_embeddings=128, pad_token_id=vocab["[PAD]"])  # fmt: skip
    DistilBertModel(config).save_pretrained(base)
    import torch

    modules = [Transformer(str(base), max_seq_length=64), Pooling(192, "mean"),
               Dense(192, dim, activation_function=torch.nn.Identity())]  # fmt: skip
    return SentenceTransformer(modules=modules, device="cpu")


def _student(spec: str, out: Path, texts: list[str], dim: int) -> Any:
    if spec == SMALL:
        return _small_student(out, texts, dim)
    from sentence_transformers import SentenceTransformer

    from pipeline.export.repository import resolve_source

    student = SentenceTransformer(str(resolve_source(spec)), device="cpu")
    if student.get_embedding_dimension() != dim:
        raise ModelError(f"{spec}: the student has {student.get_embedding_dimension()} dimensions, the teacher {dim}")
    return student


def distill(teacher: str, parallel: Path | list[Path], out: Path, *, student: str = SMALL, epochs: int = 150,
            batch_size: int = 64, lr: float | None = None, heldout_every: int = 10, seed: int = 0,
            log: Log = print) -> DistillReport:  # fmt: skip
    """Distil ``teacher``'s text tower into ``student`` on ``parallel`` and save the student to ``out`` (a
    sentence-transformers folder). Every ``heldout_every``-th English source is held out to measure the result."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    pairs = read_parallel(parallel)
    # Every heldout_every-th English source in order of appearance, with all its pairs (its translation and its
    # phrasings): what the student is measured on, it never learns.
    english = list(dict.fromkeys(s for s, _ in pairs))
    unseen = set(english[::heldout_every]) if heldout_every > 1 else set()
    held = [p for p in pairs if p[0] in unseen]
    train_pairs = [p for p in pairs if p[0] not in unseen]
    if not train_pairs:
        raise InvalidInput(f"all {len(pairs)} pairs share {len(english)} English source(s), all held out: distillation "
                           f"needs at least {heldout_every} different sources")  # fmt: skip
    model, tokenizer = _teacher(teacher)
    dim = int(model.config.projection_dim)
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        texts = sorted({t for sources, _ in pairs for t in sources})
        feats = []
        for i in range(0, len(texts), 256):
            tok = tokenizer(texts[i : i + 256], padding=True, truncation=True, return_tensors="pt")
            out_i = model.get_text_features(**tok)
            feats.append(getattr(out_i, "pooler_output", out_i))
        vector_of = dict(zip(texts, normalize(torch.cat(feats), dim=-1), strict=True))
        target_of = {sources: normalize(torch.stack([vector_of[t] for t in sources]).mean(0), dim=-1)
                     for sources in english}  # fmt: skip
    out = Path(out)
    st = _student(student, out, [t for sources, target in pairs for t in (*sources, target)], dim)
    st.train()
    # Both sides of every training pair aim at the teacher's vector of the English side (a single source text; a
    # list of them is a centroid, not a text to learn), each distinct text once per epoch.
    rows = list({text: target_of[sources] for sources, target in train_pairs
                 for text in ((sources[0], target) if len(sources) == 1 else (target,))}.items())  # fmt: skip
    lr = lr or (1e-3 if student == SMALL else 2e-5)
    optimizer = torch.optim.AdamW(st.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(rows) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        rng.shuffle(rows)
        losses = []
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            loss = torch.nn.functional.mse_loss(_embed(st, [t for t, _ in batch]), torch.stack([v for _, v in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.5f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    st.eval()
    cosine = _agreement(st, held or train_pairs, target_of)
    log(f"student ↔ teacher cosine on {'held-out' if held else 'training'} pairs: {cosine}")
    st.save(str(out))
    shutil.rmtree(out.parent / f".{out.name}-base", ignore_errors=True)  # the small student's starting point
    held_texts = [s[0] for s in english if s in unseen and len(s) == 1]
    report = DistillReport(len(train_pairs), len(held), epochs, round(seconds, 1), cosine, held_texts)
    (out / "distill_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _embed(st: Any, texts: list[str]) -> Any:
    import torch

    features = st.tokenizer(texts, padding=True, truncation=True, max_length=st.max_seq_length, return_tensors="pt")
    out = st({"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]})["sentence_embedding"]
    return torch.nn.functional.normalize(out, dim=-1)


def _agreement(st: Any, pairs: list[Pair], target_of: dict[tuple[str, ...], Any]) -> dict[str, float]:
    """Mean cosine of the student's vectors to the teacher's: of the English side (each single-text source once)
    and of the target side."""
    import torch

    out = {}
    with torch.no_grad():
        for side, chosen in (("source", list(dict.fromkeys((s[0], s) for s, _ in pairs if len(s) == 1))),
                             ("target", [(t, s) for s, t in pairs])):  # fmt: skip
            if chosen:
                teacher = torch.stack([target_of[sources] for _, sources in chosen])
                vectors = torch.cat(
                    [_embed(st, [t for t, _ in chosen[i : i + 256]]) for i in range(0, len(chosen), 256)]
                )
                out[side] = round(float((vectors * teacher).sum(-1).mean()), 4)
    return out
